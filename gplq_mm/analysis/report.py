"""Where the bits go: per-quantizer and per-block statistics of a GPLQ model
against its float teacher, and how far its weights drifted from the
teacher's, written as ``report.json``, PNG plots and a ``report.md`` that
shows them in order."""
import json
import math
import os
import os.path as osp
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..quant import (
    composed_paths,
    iter_quantizers,
    qwt_blocks,
    set_quant_state,
)
from ..quant.qwt import compensator
from . import metrics as M
from .drift import weight_drift

__all__ = ['collect', 'write_report']

SETTINGS = ('W32A4', 'W4A4 no QwT', 'W4A4')


def _progress(what: str, i: int, n: int, t0: float) -> None:
    rate = i / max(time.time() - t0, 1e-9)
    print_log(f'analysis: {what} {i}/{n} batches, {rate:.1f} batches/s, '
              f'ETA {(n - i) / max(rate, 1e-9):.0f}s', logger='current')


@torch.no_grad()
def quantizer_stats(model, batches: List[dict]) -> List[dict]:
    """Every quantizer of ``model.student`` at its current stage, its site
    calling it (:func:`~gplq_mm.quant.composed_paths`): SQNR of the
    quantized tensor, shares clipped at each end of the grid, and the
    observed range per step against the grid's (weights: once)."""
    acc: Dict[str, dict] = {}

    def hook(name, q):
        def fn(mod, args, out):
            if not q.enabled or (q.role == 'weight' and name in acc):
                return
            x = args[0]
            a = acc.setdefault(name, dict(
                sums=torch.zeros(4, dtype=torch.float64),
                clip=torch.zeros(3, dtype=torch.float64), amax=None))
            a['sums'] += M.error_sums(x, out)
            amax = M.group_amax(x, q.step.numel(), q.axis)
            a['amax'] = amax if a['amax'] is None else torch.maximum(
                a['amax'], amax)
            if q.grid == 'uniform':
                a['clip'] += M.clip_counts(x, q.step, q.qmin, q.qmax, q.axis)
        return fn

    qs = list(iter_quantizers(model.student))
    handles = [q.register_forward_hook(hook(n, q)) for n, q in qs]
    t0 = time.time()
    try:
        with composed_paths(model.student):
            for i, data in enumerate(batches):
                model.forward_all_sites(data)
                _progress('quantizers', i + 1, len(batches), t0)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, q in qs:
        if name not in acc:
            continue
        a = acc[name]
        ratio = M.range_over_grid(a['amax'], q.step,
                                  1 if q.grid != 'uniform' else q.qmax)
        low, high, n = (float(v) for v in a['clip'])
        rows.append(dict(
            name=name, role=q.role, bits=q.bits, grid=q.grid,
            steps=q.step.numel(), sqnr_db=M.sqnr_db(a['sums']),
            clip_low=low / n if n else None,
            clip_high=high / n if n else None,
            range_over_grid_median=float(ratio.median()),
            range_over_grid_max=float(ratio.max()),
            step_mean=float(q.step.detach().float().mean()),
            # per step (channel / head / output channel / tensor)
            step=q.step.detach().float().tolist(),
            observed_amax=a['amax'].float().tolist()))
    return rows


@torch.no_grad()
def block_stats(model, batches: List[dict]) -> List[dict]:
    """Relative L2 error and cosine similarity of each compensated block's
    output against the float teacher's same block, at W32A4, at W4A4
    without QwT and at W4A4 with QwT."""
    blocks = qwt_blocks(model.student, model.quant_cfg)
    sums = {(n, s): torch.zeros(4, dtype=torch.float64)
            for n, _ in blocks for s in SETTINGS}
    comps = [compensator(b) for _, b in blocks]
    t0 = time.time()
    for i, data in enumerate(batches):
        ref = _block_outputs(model.teacher, [n for n, _ in blocks],
                             lambda: model.teacher.extract_feat(
                                 data['inputs']))
        for setting in SETTINGS:
            with set_quant_state(model.student, weight=setting != 'W32A4',
                                 qwt=setting == 'W4A4'):
                out = _block_outputs(model.student, [n for n, _ in blocks],
                                     lambda: model.student.extract_feat(
                                         data['inputs']))
            for n in out:
                sums[(n, setting)] += M.error_sums(ref[n], out[n])
        _progress('blocks', i + 1, len(batches), t0)
    rows = []
    for (name, block), comp in zip(blocks, comps):
        row = dict(name=name, qwt_active=bool(comp is not None and comp.on))
        for s in SETTINGS:
            row[s] = dict(zip(('rel_l2', 'cosine'),
                              M.rel_l2_cosine(sums[(name, s)])))
        rows.append(row)
    return rows


def _block_outputs(model: nn.Module, names: List[str],
                   forward: Callable) -> Dict[str, torch.Tensor]:
    out, handles = {}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: out.__setitem__(n, o)))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return out


def collect(model, batches: List[dict],
            qwt_r2: Optional[Dict[str, float]] = None) -> dict:
    """Every number of the report for ``model`` (a GPLQ model at Stage 1 or
    2, its teacher holding the FP32 checkpoint) on ``batches``; ``qwt_r2``:
    the fit's held-out R^2 per block (``gplq_stats.json``), when known.
    ``weight_drift``: :func:`~gplq_mm.analysis.weight_drift` of the
    student's latent weights from the teacher's."""
    if model.stage < 1:
        raise ValueError('the report needs a quantized model (Stage 1 or '
                         f'2); this one is at stage {model.stage} (float)')
    was_training = model.training
    model.eval()
    try:
        report = dict(stage=model.stage, method=model.method,
                      quantizers=quantizer_stats(model, batches))
        report['weight_drift'] = weight_drift(model.student, model.teacher)
        if model.stage >= 2:
            report['blocks'] = block_stats(model, batches)
            for row in report['blocks']:
                row['qwt_r2'] = (qwt_r2 or {}).get(row['name'])
        pca = getattr(model, 'pca', None)
        if pca is not None and pca.is_fitted:
            report['pca'] = dict(
                explained=[float(v) for v in pca.explained],
                kept=int(pca.num_components), threshold=pca.threshold)
    finally:
        model.train(was_training)
    return report


def write_report(report: dict, out_dir: str) -> str:
    """Write ``report.json``, the plots and ``report.md`` to ``out_dir``;
    return the path of ``report.md``."""
    from .plots import plot_blocks, plot_drift, plot_pca, plot_quantizers
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=2, default=_json_number)
    figs = plot_quantizers(report['quantizers'], out_dir)
    if report.get('blocks'):
        figs += plot_blocks(report['blocks'], out_dir)
    if report.get('pca'):
        figs += plot_pca(report['pca'], out_dir)
    if report.get('weight_drift'):
        figs += plot_drift(report['weight_drift'], out_dir)
    md = osp.join(out_dir, 'report.md')
    with open(md, 'w') as f:
        f.write(_markdown(report, figs))
    return md


def _json_number(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _worst(rows, key, n=3, reverse=False):
    ok = [r for r in rows if r.get(key) is not None
          and math.isfinite(r[key])]
    return sorted(ok, key=lambda r: r[key], reverse=reverse)[:n]


def _markdown(report: dict, figs: List[tuple]) -> str:
    acts = [r for r in report['quantizers'] if r['role'] == 'act']
    lines = [f"# Quantization report ({report['method']}, stage "
             f"{report['stage']})", '',
             'How to read it: a quantizer with a low SQNR or a large clipped '
             'share loses the most information; the block plot shows where '
             'the quantized network drifts from the float one, and whether '
             'QwT pulls it back (the W4A4 line under the no-QwT line).', '']
    if acts:
        lines += ['Lowest activation SQNR: ' + ', '.join(
            f"`{r['name']}` {r['sqnr_db']:.1f} dB"
            for r in _worst(acts, 'sqnr_db')) + '.']
        clipped = _worst(acts, 'clip_high', reverse=True)
        lines += ['Most clipped at the top of the grid: ' + ', '.join(
            f"`{r['name']}` {100 * r['clip_high']:.2f}%" for r in clipped)
            + '.', '']
    for title, path, text in figs:
        lines += [f'## {title}', '', text, '', f'![{title}]({path})', '']
    if report.get('blocks'):
        lines += ['## Blocks (table)', '',
                  '| block | rel. L2 W32A4 | W4A4 no QwT | W4A4 | cosine W4A4 '
                  '| QwT kept | QwT R^2 |', '|---|---|---|---|---|---|---|']
        for r in report['blocks']:
            r2 = '-' if r['qwt_r2'] is None else f"{r['qwt_r2']:.3f}"
            lines.append(
                f"| {r['name']} | {r['W32A4']['rel_l2']:.4f} | "
                f"{r['W4A4 no QwT']['rel_l2']:.4f} | "
                f"{r['W4A4']['rel_l2']:.4f} | {r['W4A4']['cosine']:.4f} | "
                f"{'yes' if r['qwt_active'] else 'no'} | {r2} |")
        lines.append('')
    lines += ['Every number: `report.json`.', '']
    return '\n'.join(lines)

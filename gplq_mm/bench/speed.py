"""Stage 1 at the cost of ordinary fine-tuning? The measuring logic of
``tools/bench_speed.py`` (``make bench-speed``): for DeiT-S and Swin-T at
224 px (mmpretrain models, random init, random data), side by side in one
process, a fine-tuning step (fp32 and bf16 autocast; compiled with
``compile_cfg``), the GPLQ Stage-1 step, Stage-2 time (weight PTQ + QwT),
and float vs fake-quant eval, each compared with the float row of the same
precision and compilation.

Memory: peak CUDA memory on a GPU; on CPU, the bytes autograd saves for
backward (activations and autocast's weight copies; parameters excluded), a
deterministic proxy.
"""
import os
import os.path as osp
import statistics
import time
from contextlib import nullcontext
from typing import Dict, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

from ..demo.runs import ROOT
from ..models.compile import CompiledRegions

__all__ = ['MODEL_CFGS', 'measure', 'bench_model', 'report', 'run']

MODEL_CFGS = {
    'deit-s': 'configs/gplq/gplq_deit-s-distilled_8xb16_w4a4_in1k.py',
    'swin-t': 'configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py',
}
IMAGENET = 1_281_167


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def measure(fn, device, warmup, iters, params=()):
    """(median ms per call, memory in MiB) of ``fn``. Memory: peak CUDA
    memory over the timed calls; on CPU, what autograd saves for backward in
    one extra, untimed call, less the storage of ``params``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    else:
        params = {p.untyped_storage().data_ptr() for p in params}
        saved = {}

        def pack(x):
            st = x.untyped_storage()
            if st.data_ptr() not in params:
                saved[st.data_ptr()] = st.nbytes()
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1000)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == \
        'cuda' else sum(saved.values()) / 2**20
    return statistics.median(times), mem


def bench_model(name, device, batch, warmup, iters, compile_cfg,
                precisions=('fp32', 'bf16')):
    """Rows ``{label: (ms, MiB)}``; labels end in ``compiled`` for the
    ``torch.compile`` variants (backbones compiled, the teacher's too)."""
    from mmpretrain.structures import DataSample
    cfg = Config.fromfile(osp.join(ROOT, MODEL_CFGS[name]))
    cfg.model.checkpoint = None
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        fp = MODELS.build(cfg.model.architecture).to(device)
        gplq = MODELS.build(cfg.model).to(device)
    gplq.student.load_state_dict(fp.state_dict())
    gplq.teacher.load_state_dict(fp.state_dict())
    params = [*fp.parameters(), *gplq.parameters(),
              *gplq.teacher.parameters()]
    x = torch.randn(batch, 3, 224, 224, device=device)
    samples = [DataSample().set_gt_label(i % 1000) for i in range(batch)]
    gplq.calibrate([dict(inputs=x)])
    gplq.prepare([dict(inputs=x)])
    autocasts = {'fp32': nullcontext,
                 'bf16': lambda: torch.autocast(device.type, torch.bfloat16)}
    autocasts = {k: autocasts[k] for k in precisions}
    variants = {'': None}
    if compile_cfg is not None:
        variants[' compiled'] = compile_cfg

    def compilers(ccfg):
        """This variant's compilers of the float model and of GPLQ (both
        None when eager)."""
        return (CompiledRegions(ccfg) if ccfg is not None else None,
                gplq.set_compile_cfg(ccfg))

    def on_float(comp, fn):  # the float backbone compiled as GPLQ's are
        def call():
            with (comp.active({'backbone': fp.backbone}) if comp else
                  nullcontext()):
                return fn()
        return call

    def train_step(loss_fn, opt, ac):
        def step():
            with ac():
                loss = sum(loss_fn().values())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def timed(label, comp, fn):
        rows[label] = measure(fn, device, warmup, iters, params)
        if comp is not None and comp.failed:
            rows[label + ' (fell back to eager)'] = rows.pop(label)

    rows = {}
    fp.train()
    gplq.train()
    opt_fp = torch.optim.AdamW(fp.parameters(), lr=0)
    opt_q = torch.optim.AdamW(gplq.parameters(), lr=0)
    for prec, ac in autocasts.items():
        for tag, ccfg in variants.items():
            fp_comp, q_comp = compilers(ccfg)
            timed(f'fine-tune {prec}{tag}', fp_comp, train_step(
                on_float(fp_comp, lambda: fp.loss(x, samples)), opt_fp, ac))
            timed(f'GPLQ Stage 1 {prec}{tag}', q_comp,
                  train_step(lambda: gplq(x, samples, mode='loss'), opt_q,
                             ac))
    gplq.set_compile_cfg(None)
    fp.eval()
    gplq.eval()
    n_ptq = 512 if device.type == 'cuda' else 2 * batch
    batches = [dict(inputs=x)] * max(1, n_ptq // batch)
    t = time.perf_counter()
    gplq.weight_ptq(batches)
    _sync(device)
    rows['Stage 2 (weight PTQ + QwT)'] = ((time.perf_counter() - t) * 1000,
                                          float('nan'))
    with torch.no_grad():
        for tag, ccfg in variants.items():
            fp_comp, q_comp = compilers(ccfg)
            timed(f'eval float{tag}', fp_comp, on_float(fp_comp,
                                                        lambda: fp(x)))
            timed(f'eval W4A4 fake-quant{tag}', q_comp, lambda: gplq(x))
    gplq.set_compile_cfg(None)
    return rows, n_ptq


def _baseline(rows, label):
    """The float row a row is compared with: the same precision and
    compilation for training steps, float eval for eval."""
    tag = ' compiled' if label.endswith('compiled') else ''
    if label.startswith('eval'):
        return rows.get('eval float' + tag)
    prec = 'bf16' if 'bf16' in label else 'fp32'
    return rows.get(f'fine-tune {prec}{tag}')


def report(name, rows, n_ptq, batch, cuda):
    """Print the table and the issue's targets; return the summary."""
    mem_name = 'peak MiB' if cuda else 'saved-for-backward MiB'
    print(f'\n{name}\n| step | ms/iter | images/s | {mem_name} | '
          'time vs float | memory vs float |')
    print('|---|---|---|---|---|---|')
    for k, (ms, mem) in rows.items():
        if k.startswith('Stage 2'):
            print(f'| {k} | {ms:.0f} ms total ({n_ptq} images) | | | | |')
            continue
        base = _baseline(rows, k) or (float('nan'), ) * 2
        ratio_m = f'{mem / base[1]:.2f}x' if base[1] == base[1] and \
            base[1] > 0 and mem == mem and not k.startswith('eval') else ''
        print(f'| {k} | {ms:.1f} | {batch * 1000 / ms:.1f} | '
              f'{"" if mem != mem or k.startswith("eval") else f"{mem:.0f}"}'
              f' | {ms / base[0]:.2f}x | {ratio_m} |')
    # The targets, at bf16 when it was measured: fastest Stage 1
    # against the strongest fine-tuning step, its memory against eager
    # fine-tuning, eval against float eval measured the same way.
    prec = 'bf16' if 'fine-tune bf16' in rows else 'fp32'
    best = min((k for k in rows if k.startswith(f'GPLQ Stage 1 {prec}')),
               key=lambda k: rows[k][0])
    ft = f'fine-tune {prec} compiled'
    ft = ft if ft in rows else f'fine-tune {prec}'
    summary = {
        'stage1': best, 'fine_tune': ft,
        'stage1_time_ratio': rows[best][0] / rows[ft][0],
        'stage1_memory_ratio_vs_eager': rows[best][1] /
        rows[f'fine-tune {prec}'][1],
        'projected_stage1_epoch_min': IMAGENET / batch * rows[best][0] /
        60000,
    }
    for tag in ('', ' compiled'):
        if f'eval W4A4 fake-quant{tag}' in rows:
            summary[f'eval_ratio{tag.replace(" ", "_")}'] = \
                rows[f'eval W4A4 fake-quant{tag}'][0] / \
                rows[f'eval float{tag}'][0]
    evals = '; '.join(f'fake-quant / float eval{k[10:].replace("_", " ")}: '
                      f'{v:.2f}x' for k, v in summary.items()
                      if k.startswith('eval_ratio'))
    print(f'targets: {best} / {ft}: {summary["stage1_time_ratio"]:.2f}x '
          f'(<= 1.5x); its memory / fine-tune {prec} (eager): '
          f'{summary["stage1_memory_ratio_vs_eager"]:.2f}x (<= 1.0x); '
          f'{evals} (<= 1.3x); projected Stage-1 ImageNet epoch (batch '
          f'{batch}, this device): '
          f'{summary["projected_stage1_epoch_min"]:.1f} min (< 10 on one '
          'H100/H200)')
    return summary


def run(models: Sequence[str] = tuple(MODEL_CFGS), batch: Optional[int] = None,
        iters: Optional[int] = None, warmup: Optional[int] = None,
        compile_cfg: Optional[dict] = None,
        precisions: Sequence[str] = ('fp32', 'bf16')) -> Dict:
    """Measure ``models`` on this machine's device (CUDA when there is one:
    batch 128, 20 iterations after 5; else batch 4, 3 after 1), print each
    table and its targets; returns ``device``, ``batch`` and per model its
    ``rows`` and ``summary``."""
    cuda = torch.cuda.is_available()
    batch = batch or (128 if cuda else 4)
    iters = iters or (20 if cuda else 3)
    warmup = (5 if cuda else 1) if warmup is None else warmup
    device = torch.device('cuda' if cuda else 'cpu')
    dev_name = torch.cuda.get_device_name() if cuda else \
        f'CPU ({os.cpu_count()} cores)'
    print(f'device: {dev_name}, batch {batch}, {iters} iterations, '
          f'torch {torch.__version__}')
    result = dict(device=dev_name, batch=batch, models={})
    for name in models:
        rows, n_ptq = bench_model(name, device, batch, warmup, iters,
                                  compile_cfg, precisions)
        summary = report(name, rows, n_ptq, batch, cuda)
        result['models'][name] = dict(
            rows={k: dict(ms=v[0], mem_mb=v[1]) for k, v in rows.items()},
            summary=summary)
    return result

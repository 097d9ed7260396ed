"""The report's PNG plots (matplotlib, no display needed). Each function
returns ``(title, file name, what to look for)`` per figure it wrote."""
import math
import os.path as osp
from typing import List

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ['plot_quantizers', 'plot_blocks', 'plot_pca', 'plot_drift']


def _save(fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(osp.join(out_dir, name), dpi=100)
    plt.close(fig)
    return name


def _finite(v, default=0.0):
    return v if v is not None and math.isfinite(v) else default


def _per_quantizer(rows, xlabel, title, legend=False):
    """A figure with one row per quantizer, in network order from the top,
    named on the y axis."""
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.22 * len(rows)))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r['name'] for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis='x', alpha=0.3)
    return fig, ax


def plot_quantizers(rows: List[dict], out_dir: str) -> List[tuple]:
    figs = []
    for role, label in (('act', 'activation'), ('weight', 'weight')):
        sel = [r for r in rows if r['role'] == role]
        if not sel:
            continue
        vals = [_finite(r['sqnr_db']) for r in sel]
        worst = sorted(range(len(vals)), key=lambda i: vals[i])[:3]
        fig, ax = _per_quantizer(
            sel, 'SQNR (dB, higher is better)',
            f'{label} quantizers: SQNR of the quantized tensor')
        ax.barh(range(len(sel)), vals,
                color=['tab:red' if i in worst else 'tab:blue'
                       for i in range(len(sel))])
        figs.append((
            f'{label.capitalize()} quantizers: SQNR',
            _save(fig, out_dir, f'{role}_sqnr.png'),
            'Each bar is one quantizer, in network order; the three lowest '
            'are red. About 6 dB per bit: 4-bit tensors sit near 15-20 dB; '
            'a bar far below its neighbours is a layer that loses most.'))
    acts = [r for r in rows if r['role'] == 'act' and r['clip_low']
            is not None]
    if acts:
        y = range(len(acts))
        fig, ax = _per_quantizer(acts, 'elements clipped (%)',
                                 'activation quantizers: clipping')
        low = [100 * r['clip_low'] for r in acts]
        high = [100 * r['clip_high'] for r in acts]
        ax.barh(y, low, color='tab:orange', label='clipped at the low end')
        ax.barh(y, high, left=low, color='tab:red',
                label='clipped at the high end')
        ax.legend(loc='lower right', fontsize=8)
        figs.append(('Activation quantizers: clipping',
                     _save(fig, out_dir, 'act_clipping.png'),
                     'The share of elements outside the grid. LSQ trades '
                     'clipping for resolution; a few percent is normal, a '
                     'long bar is a range the step does not cover.'))
        fig, ax = _per_quantizer(
            acts, 'observed max |x| / (step x qmax)  (log scale)',
            'activation quantizers: observed range against the grid')
        ax.scatter([r['range_over_grid_median'] for r in acts], y,
                   label='median over steps', marker='o')
        ax.scatter([r['range_over_grid_max'] for r in acts], y,
                   label='max over steps', marker='x', color='tab:red')
        ax.axvline(1.0, color='gray', linestyle='--', linewidth=1)
        ax.set_xscale('log')
        ax.legend(loc='lower right', fontsize=8)
        figs.append(('Activation quantizers: range against the grid',
                     _save(fig, out_dir, 'act_range.png'),
                     'Right of the dashed line (1) a channel or head is '
                     'clipped; far left, it uses few of the grid\'s levels.'))
    return figs


def plot_blocks(rows: List[dict], out_dir: str) -> List[tuple]:
    from .report import SETTINGS
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    x = range(len(rows))
    for s, style in zip(SETTINGS, ('o-', 's--', '^-')):
        a1.plot(x, [r[s]['rel_l2'] for r in rows], style, label=s)
        a2.plot(x, [r[s]['cosine'] for r in rows], style, label=s)
    a1.set_ylabel('relative L2 error vs FP32')
    a1.set_title('block outputs against the float model')
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.set_ylabel('cosine similarity vs FP32')
    a2.grid(alpha=0.3)
    a2.set_xticks(list(x))
    a2.set_xticklabels([r['name'] for r in rows], rotation=60, ha='right',
                       fontsize=7)
    return [('Blocks: error against the float model',
             _save(fig, out_dir, 'blocks.png'),
             'Error grows with depth as quantization noise accumulates. '
             'The gap between "W32A4" and "W4A4 no QwT" is what weight '
             'quantization costs; "W4A4" below "W4A4 no QwT" is what QwT '
             'wins back, block by block.')]


def plot_pca(pca: dict, out_dir: str) -> List[tuple]:
    ev = pca['explained']
    cum, total = [], 0.0
    for v in ev:
        total += v
        cum.append(total)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(range(1, len(cum) + 1), cum, label='cumulative explained')
    ax.bar(range(1, len(ev) + 1), ev, color='tab:gray', alpha=0.5,
           label='per component')
    ax.axhline(pca['threshold'], color='tab:red', linestyle='--',
               label=f"threshold {pca['threshold']:.0%}")
    ax.axvline(pca['kept'], color='tab:green', linestyle=':',
               label=f"kept {pca['kept']} of {len(ev)}")
    ax.set_xlabel('principal component of the teacher features')
    ax.set_ylabel('explained variance ratio')
    ax.set_title('PCA of the teacher\'s penultimate features (L_PCA)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [('PCA spectrum', _save(fig, out_dir, 'pca_spectrum.png'),
             'L_PCA matches the student to the teacher in the kept '
             'directions: the smallest multiple of 32 components reaching '
             'the threshold.')]


def plot_drift(drift: dict, out_dir: str) -> List[tuple]:
    """Per layer: MAE of the latent weights against the FP32 checkpoint's,
    absolute and relative to the layer's mean ``|w_fp|``
    (:func:`~gplq_mm.analysis.weight_drift`)."""
    rows = drift['layers']
    fig, (a1, a2) = plt.subplots(1, 2, sharey=True,
                                 figsize=(11, 1.2 + 0.22 * len(rows)))
    y = range(len(rows))
    a1.set_yticks(list(y))
    a1.set_yticklabels([r['name'] for r in rows], fontsize=7)
    a1.set_ylim(len(rows) - 0.5, -0.5)
    for ax, key, scale, xlabel, mean in (
            (a1, 'mae', 1, 'MAE: mean |w - w_fp|', drift['mae_mean']),
            (a2, 'rel_mae', 100, 'MAE / mean |w_fp| (%)',
             _finite(drift['rel_mae_mean']))):
        ax.barh(y, [scale * _finite(r[key]) for r in rows],
                color='tab:blue')
        ax.axvline(scale * mean, color='tab:red', linestyle='--',
                   linewidth=1)
        ax.set_xlabel(xlabel + ';  dashed: mean over layers')
        ax.grid(axis='x', alpha=0.3)
    fig.suptitle('latent weights against the FP32 checkpoint')
    n = len(rows)
    return [('Weight drift from the FP32 checkpoint',
             _save(fig, out_dir, 'weight_drift.png'),
             f"Mean over {n} quantized layers: MAE "
             f"{drift['mae_mean']:.4g}, MSE {drift['mse_mean']:.4g}, MAE "
             f"relative to mean |w_fp| {100 * drift['rel_mae_mean']:.2f}%. "
             'How far training moved the weights out of the FP32 basin '
             '(paper Table 7, Swin-T: GPLQ Stage 1 0.086 / 0.049, direct '
             'W4A4 QAT 0.269 / 0.289). PTQ methods train nothing: their '
             'drift is 0, except what a reparameterization (RepQ) or a '
             'deployable model\'s folded channel scales re-express.')]

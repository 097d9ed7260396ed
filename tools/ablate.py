"""Ablations of GPLQ's choices where the paper is silent, on the demo models,
through tools/train.py and tools/test.py:

    python tools/ablate.py qwt-target            # cls and det, W4A4 / W3A3
    python tools/ablate.py stage1-regularization  # cls, W4A4 / W3A3
    python tools/ablate.py attn-granularity       # cls and det, W4A4 / W3A3

qwt-target: QwT's regression target, the paper's ('same_input': one block,
FP32 against 4-bit weights on the same quantized input) against the chained
W32A4 output ('chained'); both from one Stage-1 model, Stage 2 rerun.
stage1-regularization: Stage 1 with the host config's regularization
(label smoothing, drop_path, the crop augmentation) or without
(``gplq_mm.recipes`` ``stage1_regularization='none'``).
attn-granularity: steps of q, k, v and the softmax output per head (the
default) or per token (the paper's wording), Stage 1 and Stage 2 rerun.

The gplq runs are tools/benchmark.py's (``work_dirs/bench/<task>``), reused
when present. Writes work_dirs/ablate/<name>/results.{md,json}.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config

from gplq_mm.demo.runs import (
    METRIC_NAMES,
    ROOT,
    TASKS,
    bench_dir,
    evaluate,
    train,
    write_results,
)
from gplq_mm.models.methods import checkpoint_name, stage1_name
from gplq_mm.utils.io import read_json

STAGE1 = stage1_name('gplq')


def _train(work, cfg, fp_ckpt, bits, options):
    train(work, cfg, fp_ckpt, checkpoint_name('gplq', bits, bits), options)


def _test(out, name, cfg, ckpt, options, metrics):
    return evaluate(out, name, cfg, ckpt, options, metrics, reuse=True)


def _gplq_runs():
    """``(task name, task, bits, bit options, work dir, FP32 checkpoint)``
    of tools/benchmark.py's gplq run of each task and width (trained when
    missing)."""
    for task_name, task in TASKS.items():
        fp_ckpt = task['fp_model']({})
        for bits in (4, 3):
            opts = [f'model.quant_cfg.w_bits={bits}',
                    f'model.quant_cfg.a_bits={bits}']
            base = bench_dir(task_name, 'gplq', bits)
            _train(base, task['cfg'], fp_ckpt, bits, opts)
            yield task_name, task, bits, opts, base, fp_ckpt


def qwt_target(out):
    rows = []
    for task_name, task, bits, opts, base, fp_ckpt in _gplq_runs():
        # base: the default target (same_input); chained: Stage 2 rerun
        chained = f'{out}/{task_name}_w{bits}a{bits}_chained'
        _train(chained, task['cfg'], fp_ckpt, bits, opts + [
            f'load_from={base}/{STAGE1}',
            'train_cfg.max_epochs=0',
            'custom_hooks.0.qwt_target=chained'])
        final = checkpoint_name('gplq', bits, bits)
        for name, ckpt, extra in (
                ('no QwT', f'{base}/{final}', ['model.use_qwt=False']),
                ('same_input (paper)', f'{base}/{final}', []),
                ('chained', f'{chained}/{final}', [])):
            tag = f'{task_name}_w{bits}a{bits}_{name.split()[0]}'
            r2 = read_json(osp.join(osp.dirname(ckpt),
                                         'gplq_stats.json'))['qwt_r2']
            rows.append(dict(
                task=task_name, bits=bits, variant=name,
                kept=None if name == 'no QwT' else
                f'{sum(v > 0 for v in r2.values())}/{len(r2)}',
                **_test(out, tag, task['cfg'], ckpt, opts + extra,
                        task['metrics'])))
    return rows


def stage1_regularization(out):
    from gplq_mm.recipes import without_regularization
    task = TASKS['cls']
    fp_ckpt = task['fp_model']({})
    cfg = Config.fromfile(task['cfg'])
    host = Config(dict(model=cfg.model.architecture,
                       train_dataloader=cfg.train_dataloader))
    cfg.model.architecture, data = without_regularization(host)
    cfg.train_dataloader.dataset.pipeline = data['pipeline']
    os.makedirs(out, exist_ok=True)
    none_cfg = f'{out}/gplq_no_regularization.py'
    cfg.dump(none_cfg)
    rows = []
    for bits in (4, 3):
        opts = [f'model.quant_cfg.w_bits={bits}',
                f'model.quant_cfg.a_bits={bits}']
        final = checkpoint_name('gplq', bits, bits)
        host_work = bench_dir('cls', 'gplq', bits)
        none_work = f'{out}/cls_w{bits}a{bits}_none'
        _train(host_work, task['cfg'], fp_ckpt, bits, opts)
        _train(none_work, none_cfg, fp_ckpt, bits, opts)
        for name, c, work in (('host', task['cfg'], host_work),
                              ('none', none_cfg, none_work)):
            for stage, ckpt in (('Stage 1', STAGE1),
                                ('W{0}A{0}'.format(bits), final)):
                rows.append(dict(
                    task='cls', bits=bits, variant=f'{name}, {stage}',
                    **_test(out, f'w{bits}a{bits}_{name}_{ckpt[:-4]}', c,
                            f'{work}/{ckpt}', opts, task['metrics'])))
    return rows


def attn_granularity(out):
    rows = []
    for task_name, task, bits, opts, head, fp_ckpt in _gplq_runs():
        final = checkpoint_name('gplq', bits, bits)
        token = f'{out}/{task_name}_w{bits}a{bits}_token'
        tok = ['model.quant_cfg.attn_granularity=token']
        _train(token, task['cfg'], fp_ckpt, bits, opts + tok)
        for name, work, extra in (('head', head, []),
                                  ('token', token, tok)):
            for stage, ckpt in (('Stage 1', STAGE1),
                                (f'W{bits}A{bits}', final)):
                rows.append(dict(
                    task=task_name, bits=bits,
                    variant=f'per {name}, {stage}', **_test(
                        out, f'{task_name}_w{bits}a{bits}_{name}_'
                        f'{ckpt[:-4]}', task['cfg'], f'{work}/{ckpt}',
                        opts + extra, task['metrics'])))
    return rows


ABLATIONS = {'qwt-target': qwt_target,
             'stage1-regularization': stage1_regularization,
             'attn-granularity': attn_granularity}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('ablation', choices=sorted(ABLATIONS))
    args = p.parse_args()
    os.chdir(ROOT)
    out = f'work_dirs/ablate/{args.ablation}'
    os.makedirs(out, exist_ok=True)
    rows = ABLATIONS[args.ablation](out)
    names = METRIC_NAMES
    lines = ['| task | bits | variant | QwT kept | result |',
             '|---|---|---|---|---|']
    for r in rows:
        task = TASKS[r['task']]
        res = ', '.join(names[k] + ' ' + task['fmt'].format(
            task['scale'] * r[k]) for k in names if k in r)
        lines.append(f"| {r['task']} | W{r['bits']}A{r['bits']} | "
                     f"{r['variant']} | {r.get('kept') or '-'} | {res} |")
    write_results(out, lines, rows)


if __name__ == '__main__':
    main()

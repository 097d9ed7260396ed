"""`make demo-export`: the demo ViT in deployable mode, exported to ONNX and
run in onnxruntime and OpenVINO, side by side with PyTorch and the FP32
export.

1. trains the float demo ViT when missing (as `make demo`);
2. runs GPLQ W4A4 in deployable mode
   (configs/demo/gplq_vit-tiny_digits_w4a4_deploy.py, tools/train.py);
3. exports it (tools/export.py): FP32, runtime and storage ONNX, with the
   onnxruntime-vs-PyTorch (and OpenVINO-vs-PyTorch) comparison on the
   whole val set;
4. evaluates the checkpoint and the ONNX models with tools/test.py, the
   W4A4 one in both runtimes;
5. measures, in this process, median latency at batch 1 and 16 with 2
   threads (the FP32 and the W4A4 file in onnxruntime and OpenVINO,
   alternating) and the kernels onnxruntime ran; prints one table, writes
   work_dirs/demo/export/results.*

Finished steps are reused (--force redoes the GPLQ run and the export).
"""
import argparse
import os
import os.path as osp
import shutil

import numpy as np

from gplq_mm.demo.runs import (
    ROOT,
    WORK,
    cls_fp_model,
    evaluate,
    run,
    train,
    write_results,
)
from gplq_mm.models.methods import checkpoint_name
from gplq_mm.utils.io import read_json

CFG = 'configs/demo/gplq_vit-tiny_digits_w4a4_deploy.py'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--force', action='store_true')
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    os.chdir(ROOT)
    work, out = f'{WORK}/deploy', f'{WORK}/export'
    if args.force:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    fp_ckpt = cls_fp_model({})
    final = checkpoint_name('gplq-deploy', 4, 4)
    ckpt = f'{work}/{final}'
    train(work, CFG, fp_ckpt, final, step='GPLQ W4A4, deployable')
    with open('data/digits/meta/val.txt') as f:
        n_val = sum(1 for _ in f)
    stem = osp.join(out, osp.splitext(final)[0])
    run('export', ['tools/export.py', CFG, ckpt, '--out-dir', out,
                   '--check', str(n_val)])
    summary = read_json(f'{stem}_export.json')
    top1 = {}
    for name, model, *extra in (
            ('PyTorch W4A4', ckpt), ('ONNX W4A4', f'{stem}.onnx'),
            ('ONNX W4A4 storage', f'{stem}_int4.onnx'),
            ('ONNX W4A4 in OpenVINO', f'{stem}.onnx', '--runtime',
             'openvino'),
            ('ONNX W4A4 in OpenVINO f32', f'{stem}.onnx', '--runtime',
             'openvino-f32'),
            ('ONNX FP32', f'{stem}_fp32.onnx'),
            ('ONNX FP32 in OpenVINO', f'{stem}_fp32.onnx', '--runtime',
             'openvino')):
        top1[name] = evaluate(out, name.replace(' ', '_'), CFG, model,
                              metrics=['accuracy/top1'],
                              args=extra)['accuracy/top1']

    from gplq_mm.bench.export import speed
    shape = summary['input_shape']
    speeds = {}
    for batch in (1, 16):
        x = np.random.default_rng(0).standard_normal(
            (batch, *shape)).astype(np.float32)
        speeds[batch] = speed(f'{stem}_fp32.onnx', f'{stem}.onnx', x,
                              threads=args.threads)
    check, size = summary['check']['model'], summary['bytes']
    parity, codes = check['parity'], check['codes']
    mib = {k: v / 2**20 for k, v in size.items()}
    lines = [
        f'Demo ViT (digits, {n_val} val images, 1 image = '
        f'{100 / n_val:.2f} points), W4A4 deployable; CPU, '
        f'{args.threads} threads; OpenVINO in its default precision (bf16 '
        'float layers on CPUs with AMX or AVX512_BF16) unless f32 is said', '',
        '| measure | value |', '|---|---|',
        *(f'| top-1, {k} | {v:.2f} |' for k, v in top1.items()),
        f'| predictions agreeing, ONNX vs PyTorch W4A4 | '
        f'{100 * parity["agreement"]:.2f}% of {parity["images"]} |',
        f'| max abs logit difference, ONNX vs PyTorch | '
        f'{parity["max_abs"]:.4f} |',
        *(f'| predictions agreeing / max abs logit difference, OpenVINO '
          f'{c["precision"]} vs PyTorch W4A4 | {100 * c["agreement"]:.2f}% '
          f'/ {c["max_abs"]:.4f} |'
          for c in (check.get('parity_openvino-f32'),
                    check.get('parity_openvino')) if c),
        f'| integer codes equal to PyTorch\'s, worst of '
        f'{codes["quantizers"]} quantizers: same input / whole model | '
        f'{100 * codes["same_input_min"]:.3f}% / '
        f'{100 * codes["end_to_end_min"]:.3f}% (mean '
        f'{100 * codes["end_to_end_mean"]:.3f}%) |',
        f'| file size FP32 / runtime / storage (MiB) | {mib["fp32"]:.2f} / '
        f'{mib["runtime"]:.2f} ({size["runtime"] / size["fp32"]:.2f}x) / '
        f'{mib["storage"]:.2f} ({size["storage"] / size["fp32"]:.2f}x) |',
    ]
    for batch, s in speeds.items():
        lat = s['latency_s']
        lines.append(
            f'| median latency batch {batch} (ms), '
            + ' / '.join(lat) + ' | '
            + ' / '.join(f'{1e3 * v:.2f}' for v in lat.values())
            + f' (ORT W4A4 / ORT FP32 {s["ratio"]:.2f}x; OV W4A4 / '
            f'{s["fastest_float"]} {s["ratio_fastest"]["OV W4A4"]:.2f}x) |')
    ops = speeds[16]['ops']
    lines.append('| kernels run (W4A4) | ' + ', '.join(
        f'{k} {v}' for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
        + ' |')
    write_results(out, lines, dict(top1=top1, parity=parity, codes=codes,
                                   bytes=size,
                                   speed={str(b): s for b, s in
                                          speeds.items()}))


if __name__ == '__main__':
    main()

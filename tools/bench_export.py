"""`make bench-export`: file size and CPU latency of exported W4A4 models
in onnxruntime and OpenVINO against their FP32 export in both, on
full-size DeiT-S and Swin-T built from the shipped configs with random
weights (no download; size and speed do not depend on the values).

    python tools/bench_export.py [--threads 2] [--configs ...]
                                 [--detector CONFIG] [--det-images 3]

For each model: the FP32, runtime and storage (lossless, and with FP16
float matrices) file sizes, and the median latency at batch 1 and 16 of
the FP32 file in onnxruntime and in OpenVINO (f32, and its default: bf16
on AMX CPUs) and of the W4A4 file in both (sessions alternating in one
process), with the integer and float matmul kernels onnxruntime ran; each
ratio against onnxruntime FP32 and against the fastest float run. Then
the detector (Mask R-CNN Swin-T, scope full, deployable; ``--detector ''``
skips it) exported as graphs at
its test canvas (800 x 1344): file sizes, and each part's latency per
image (trunk, glue in mmdet, box head, mask head, mask RoIAlign + paste)
with FP32 and W4A4 graphs in both runtimes alternating. Writes
work_dirs/bench/export/results.*
"""
import argparse
import os
import os.path as osp

import torch

from gplq_mm.demo.runs import ROOT, write_results

CONFIGS = ('configs/gplq/gplq_deit-s-distilled_8xb16_w4a4_in1k.py',
           'configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py')
DETECTOR = ('configs/gplq_det/'
            'gplq_mask-rcnn_swin-t-p4-w7_fpn_1x_coco_w4a4_full.py')


def detector_rows(config, out, threads, images):
    """The detector's table rows and its results."""
    import collections

    from gplq_mm.bench.export import (
        detector_speed,
        detector_speed_table,
        detector_stand_in,
    )
    from gplq_mm.deploy import export_detector
    from gplq_mm.deploy.det_export import (
        detector_graphs,
        graph_inputs,
    )
    from gplq_mm.deploy.verify import kernel_audit
    model, batches, cfg = detector_stand_in(config, images=images)
    name = osp.basename(config).split('_fpn')[0].replace('gplq_', '')
    manifest = export_detector(model, out, name, [batches[0]['inputs']],
                               logger=print)
    graphs = manifest['trunk'] + manifest['roi']
    size = {f: sum(g['bytes'][f] for g in graphs)
            for f in ('fp32', 'runtime', 'storage')}
    inputs = graph_inputs(model, manifest, [b['inputs'] for b in batches])
    modules = dict(detector_graphs(model))
    kernels = collections.Counter()
    for g in graphs:
        k = kernel_audit(model, osp.join(out, g['files']['runtime']),
                         inputs[g['name']][0],
                         modules[g['name'].split('_')[0]])
        kernels.update(integer=k['integer'], float=k['float'])
    speed = detector_speed(cfg, out, batches, threads=threads)
    lines = ['', f'{name}, scope full, deployable, random weights, canvas '
             f'{manifest["trunk"][0]["canvas"]}, {images} images, CPU, '
             f'{threads} threads; files FP32 {size["fp32"] / 2**20:.1f} '
             f'MiB, runtime {size["runtime"] / size["fp32"]:.3f}x, storage '
             f'{size["storage"] / size["fp32"]:.3f}x; {kernels["integer"]} '
             f'integer / {kernels["float"]} float matmul / conv kernels in '
             'onnxruntime', '', *detector_speed_table(speed)]
    return lines, dict(model=name, bytes=size, speed=speed,
                       kernels=dict(kernels))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--configs', nargs='*', default=list(CONFIGS))
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default='work_dirs/bench/export')
    p.add_argument('--detector', default=DETECTOR)
    p.add_argument('--det-images', type=int, default=3)
    args = p.parse_args()
    os.chdir(ROOT)
    os.makedirs(args.out, exist_ok=True)
    from gplq_mm.bench.export import runs, speed, stand_in
    from gplq_mm.deploy import export_forms, to_storage
    lines = [f'CPU, {args.threads} threads, median ms; ORT: onnxruntime, '
             'OV: OpenVINO (bf16: its default on AMX CPUs); ratios of W4A4 '
             'to ORT FP32 and of the faster W4A4 run to the fastest float '
             'run', '',
             '| model | runtime size | storage size (FP16 floats) | batch | '
             + ' | '.join(label for label, *_ in runs()) +
             ' | ORT W4A4 / ORT FP32 | best W4A4 / fastest float | '
             'integer / float matmuls (ORT) |',
             '|---|---|---|---|' + '---|' * (len(runs()) + 3)]
    rows = []
    for cfg in args.configs:
        name = osp.basename(cfg).split('_8xb')[0].replace('gplq_', '')
        model, size = stand_in(cfg, deployable=True)
        exported = {}
        for batch in (1, 16):
            x = torch.randn(batch, 3, *size,
                            generator=torch.Generator().manual_seed(0))
            if batch > 1 and exported[1]['dynamic_batch']:
                forms = exported[1]  # the batch-1 files run batch 16 too
            else:  # (mmpretrain's Swin exports with a fixed batch size)
                forms = export_forms(model, args.out, f'{name}_b{batch}', x,
                                     logger=print)
            exported[batch] = forms
            half = to_storage(forms['paths']['runtime'],
                              forms['paths']['storage'].replace(
                                  '.onnx', '_fp16.onnx'), float16=True)
            b = forms['bytes']
            s = speed(forms['paths']['fp32'], forms['paths']['runtime'],
                      x.numpy(), threads=args.threads,
                      repeats=10 if batch > 1 else 30)
            row = dict(model=name, batch=batch, bytes=dict(b, storage_fp16=
                                                           half['bytes']),
                       dynamic_batch=forms['dynamic_batch'], **s)
            rows.append(row)
            lat, best = s['latency_s'], min(s['ratio_fastest'].items(),
                                            key=lambda kv: kv[1])
            lines.append(
                f'| {name} | {b["runtime"] / b["fp32"]:.3f}x | '
                f'{b["storage"] / b["fp32"]:.3f}x '
                f'({half["bytes"] / b["fp32"]:.3f}x) | {batch} | '
                + ' | '.join(f'{1e3 * v:.1f}' for v in lat.values()) +
                f' | {s["ratio"]:.2f}x | {best[1]:.2f}x ({best[0]} / '
                f'{s["fastest_float"]}) | {s["integer_kernels"]} / '
                f'{s["float_matmuls"]} |')
    if args.detector:
        more, row = detector_rows(args.detector, args.out, args.threads,
                                  args.det_images)
        lines += more
        rows.append(row)
    write_results(args.out, lines, rows)


if __name__ == '__main__':
    main()

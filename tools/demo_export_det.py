"""`make demo-export-det`: the demo Mask R-CNN in deployable mode, exported
as graphs and run in onnxruntime and OpenVINO with mmdet's code between
them, side by side with PyTorch and the FP32 export.

1. trains the float demo detector when missing (as `make demo-det`);
2. runs GPLQ W4A4 at scope 'full' in deployable mode
   (configs/demo/gplq_mask-rcnn_swin-tiny_digits_w4a4_full_deploy.py);
3. exports it (tools/export.py): trunk, box head and mask head graphs in
   FP32, runtime and storage form, with the per-graph check on the whole
   val set (outputs, integer codes, the kernels onnxruntime runs);
4. evaluates with tools/test.py (COCO box / mask AP): the checkpoint in
   PyTorch (W4A4, and FP32 with every quantizer off), the export's W4A4,
   storage and FP32 graphs, the W4A4 ones in OpenVINO too; and the
   paper-faithful scope-'full' GPLQ model of `make demo-det` when it is
   there;
5. measures, in this process, each part's latency per image with 2
   threads (FP32 graphs vs W4A4 graphs, in onnxruntime and in OpenVINO,
   alternating): trunk, glue in mmdet, box head, mask head, mask RoIAlign
   + paste; prints one table, writes
   work_dirs/demo/export_det/results.*

Finished steps are reused (--force redoes the GPLQ run and the export).
"""
import argparse
import collections
import os
import os.path as osp
import shutil

from gplq_mm.demo.runs import (
    DET_GPLQ_CFG,
    ROOT,
    WORK,
    det_fp_model,
    evaluate,
    run,
    train,
    write_results,
)
from gplq_mm.models.methods import checkpoint_name
from gplq_mm.utils.io import read_json

CFG = 'configs/demo/gplq_mask-rcnn_swin-tiny_digits_w4a4_full_deploy.py'
METRICS = ['coco/bbox_mAP', 'coco/segm_mAP']


def speed_batches(cfg, n):
    """The first ``n`` val images, one per batch, preprocessed."""
    from mmengine.registry import MODELS, DefaultScope
    from mmengine.runner import Runner
    with DefaultScope.overwrite_default_scope('mmdet'):
        pre = MODELS.build(dict(cfg.model.architecture.data_preprocessor))
        loader = Runner.build_dataloader(dict(cfg.val_dataloader,
                                              batch_size=1))
    out = []
    for data in loader:
        out.append(pre(data, False))
        if len(out) == n:
            break
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--force', action='store_true')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--speed-images', type=int, default=20)
    args = p.parse_args()
    os.chdir(ROOT)
    work, out = f'{WORK}/det_deploy', f'{WORK}/export_det'
    if args.force:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    fp_ckpt = det_fp_model({})
    final = checkpoint_name('gplq-deploy', 4, 4)
    ckpt = f'{work}/{final}'
    train(work, CFG, fp_ckpt, final,
          step='GPLQ W4A4, scope full, deployable')
    n_val = len(read_json(
        'data/digit_coco/annotations/instances_val.json')['images'])
    stem = osp.join(out, osp.splitext(final)[0])
    if not osp.isfile(f'{stem}_export.json'):
        run('export', ['tools/export.py', CFG, ckpt, '--out-dir', out,
                       '--check', str(n_val)])
    summary = read_json(f'{stem}_export.json')
    ap = {}
    for name, model, extra, options in (
            ('PyTorch FP32 (quantizers off)', ckpt, (),
             ['model.internal_fp32=True']),
            ('ONNX FP32', out, ('--form', 'fp32'), []),
            ('PyTorch W4A4', ckpt, (), []),
            ('ONNX W4A4', out, (), []),
            ('ONNX W4A4 storage', out, ('--form', 'storage'), []),
            ('ONNX W4A4 in OpenVINO', out, ('--runtime', 'openvino'), []),
            ('ONNX W4A4 in OpenVINO f32', out, ('--runtime', 'openvino-f32'),
             [])):
        ap[name] = evaluate(out, name.replace(' ', '_').replace(
            '(', '').replace(')', ''), CFG, model, options, METRICS,
            reuse=True, args=extra)
    faithful = f'{WORK}/det_gplq_full/{checkpoint_name("gplq", 4, 4)}'
    if osp.isfile(faithful):
        ap['PyTorch W4A4, paper-faithful GPLQ (make demo-det)'] = evaluate(
            out, 'faithful', DET_GPLQ_CFG['full'], faithful, (), METRICS,
            reuse=True)

    from mmengine.config import Config

    import gplq_mm  # noqa: F401
    from gplq_mm.bench.export import detector_speed, detector_speed_table
    cfg = Config.fromfile(CFG)
    speed = detector_speed(cfg, out, speed_batches(cfg, args.speed_images),
                           threads=args.threads)

    lines = [
        f'Demo Mask R-CNN (digit canvases, {n_val} val images), W4A4 '
        f'deployable, scope full; CPU, {args.threads} threads',
        '', '| model | box AP | mask AP |', '|---|---|---|',
        *(f'| {k} | {100 * v["coco/bbox_mAP"]:.1f} | '
          f'{100 * v["coco/segm_mAP"]:.1f} |' for k, v in ap.items()),
        '', '| graph | FP32 / runtime / storage (MiB) | integer kernels | '
        'float matmul / conv kernels, why | codes equal, same input / '
        'whole graph (worst quantizer) |', '|---|---|---|---|---|']
    graphs = {g['name']: g for g in summary['trunk'] + summary['roi']}
    for name, check in summary['check'].items():
        b = {k: v / 2**20 for k, v in graphs[name]['bytes'].items()}
        k, c = check['kernels'], check['codes']
        why = collections.Counter(f['why'] for f in k['float_nodes'])
        lines.append(
            f'| {name} | {b["fp32"]:.2f} / {b["runtime"]:.2f} / '
            f'{b["storage"]:.2f} | {k["integer"]} | {k["float"]}'
            + (': ' + '; '.join(f'{n} {w}' for w, n in why.items())
               if why else '') + ' | '
            + (f'{100 * c["same_input_min"]:.3f}% / '
               f'{100 * c["end_to_end_min"]:.2f}% |'
               if c['quantizers'] else '- |'))
    total = {f: sum(g['bytes'][f] for g in graphs.values())
             for f in ('fp32', 'runtime', 'storage')}
    lines.append(f'| all graphs | {total["fp32"] / 2**20:.2f} / '
                 f'{total["runtime"] / 2**20:.2f} '
                 f'({total["runtime"] / total["fp32"]:.2f}x) / '
                 f'{total["storage"] / 2**20:.2f} '
                 f'({total["storage"] / total["fp32"]:.2f}x) | | | |')
    lines += ['', f'Speed: {args.speed_images} images, batch 1, '
              f'{args.threads} threads; ORT: onnxruntime, OV: OpenVINO', '',
              *detector_speed_table(speed)]
    write_results(out, lines, dict(ap=ap, speed=speed,
                                   bytes=total, check=summary['check']))


if __name__ == '__main__':
    main()

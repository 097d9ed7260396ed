"""Export a GPLQ W4A4 checkpoint to ONNX: the runtime model, its INT4
storage form and the FP32 baseline (see gplq_mm/deploy/export.py).

    python tools/export.py CONFIG CHECKPOINT [--out-dir DIR] [--check N]

Classifiers export image -> logits; the batch axis is dynamic, the image
size the first test batch's (``--shape H W`` to set it). Two-stage
detectors export as graphs (gplq_mm/deploy/det_export.py): a trunk (image ->
FPN levels and RPN outputs) per canvas (``--shape H W``, repeatable; the
default is the first test batch's padded size; smaller batches are
zero-padded to it), a box and a mask head per stage (dynamic RoI axis), and
a manifest, ``<name>_detector.json``; mmdet's own code runs between them.

``--check N`` compares onnxruntime with PyTorch on N test images, graph by
graph: outputs (a classifier's argmax agreement), every quantizer's integer
codes (on onnxruntime's own input, and through the whole graph), and the
kernels onnxruntime runs (integer and float, each float matmul / conv by
name with why). Evaluate an export with
``tools/test.py CONFIG DIR/<name>.onnx`` (a classifier) or
``tools/test.py CONFIG DIR`` (a detector; ``--form fp32`` for its FP32
graphs).
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch
from mmengine.runner import Runner

import gplq_mm  # noqa: F401  registers the GPLQ models and hook
from gplq_mm.deploy import MIN_OPSET, check_graph, check_opset, export_forms
from gplq_mm.deploy.det_export import (
    detector_graphs,
    export_detector,
    graph_inputs,
)
from gplq_mm.utils import (
    add_runner_args,
    check_checkpoint_file,
    finish_launch,
    mmengine_checkpoint_globals,
    runner_config,
)
from gplq_mm.utils.data import take_images, with_progress


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', help='a Stage-2 (W4A4) GPLQ checkpoint')
    p.add_argument('--out-dir', help='default: the checkpoint\'s directory')
    p.add_argument('--opset', type=int, default=MIN_OPSET)
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                   action='append',
                   help='input size (default: the first test batch\'s); '
                   'a detector takes several canvases')
    p.add_argument('--check', type=int, default=0, metavar='N',
                   help='compare onnxruntime with PyTorch on N test images')
    add_runner_args(p)
    return p.parse_args()


def test_images(runner, model, n, shape=None, what=None, pad=False):
    """Preprocessed test image tensors, ``n`` in all (resized to ``shape``,
    or with ``pad`` zero-padded to it where they fit, as a detector's
    canvas); with ``what``, progress is logged every 30 s."""
    batches = take_images(Runner.build_dataloader(runner.cfg.test_dataloader),
                          lambda d: model.data_preprocessor(d, False), n)
    if what:
        batches = with_progress(batches, n, what, runner.logger.info, 30.0)
    for data in batches:
        x = data['inputs'].float()
        h, w = x.shape[-2:]
        if pad and shape is not None and h <= shape[0] and w <= shape[1]:
            x = torch.nn.functional.pad(x, (0, shape[1] - w, 0, shape[0] - h))
        if shape is not None and tuple(x.shape[-2:]) != tuple(shape):
            x = torch.nn.functional.interpolate(x, size=tuple(shape),
                                                mode='bilinear')
        yield x


def classifier_summary(forms, example, log):
    """tools/export.py's summary of a classifier export."""
    paths, sizes = forms['paths'], forms['bytes']
    for k, p in paths.items():
        log(f'{k:8s} {sizes[k] / 2**20:8.2f} MiB  {p}')
    return dict(files=paths, bytes=sizes, outputs=forms['outputs'],
                input_shape=list(example.shape[1:]),
                per_channel_layers=len(forms['per_channel']),
                ratio_to_fp32={k: sizes[k] / sizes['fp32']
                               for k in ('runtime', 'storage')})


def main():
    args = parse_args()
    try:
        check_checkpoint_file(args.checkpoint)
        check_opset(args.opset)  # before the model is built
    except ValueError as e:
        sys.exit(f'error: {e}')
    out_dir = args.out_dir or osp.dirname(osp.abspath(args.checkpoint))
    os.makedirs(out_dir, exist_ok=True)
    cfg = runner_config(args)
    cfg.work_dir = out_dir
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    log = runner.logger.info
    with mmengine_checkpoint_globals():
        try:
            runner.load_checkpoint(args.checkpoint, strict=True)
        except ValueError as e:
            sys.exit(f'error: {e}')
    # The export and its checks run on the CPU (onnxruntime's, numpy's),
    # whatever device the Runner chose: on a GPU host it picks CUDA.
    model = runner.model.cpu()
    stem = osp.splitext(osp.basename(args.checkpoint))[0]
    detector = getattr(model, 'task', '') == 'two-stage detector'
    shapes = args.shape or [None]
    if len(shapes) > 1 and not detector:
        sys.exit('error: --shape given more than once: only a detector '
                 'takes several canvases')
    # a detector's canvas takes a smaller image padded, as its runtime does
    canvases = [next(test_images(runner, model, 1, s, pad=detector))
                for s in shapes]
    try:
        if detector:
            summary = export_detector(model, out_dir, stem, canvases,
                                      opset=args.opset, logger=log)
        else:
            summary = classifier_summary(export_forms(
                model, out_dir, stem, canvases[0], opset=args.opset,
                logger=log), canvases[0], log)
    except (ValueError, TypeError, NotImplementedError) as e:
        sys.exit(f'error: {e}')
    if args.check:
        shape = canvases[0].shape[-2:]
        batches = list(test_images(runner, model, args.check, shape,
                                   'check inputs', pad=detector))
        if detector:
            inputs = graph_inputs(model, summary, batches)
            graphs = dict(detector_graphs(model))
            summary['check'] = {
                g['name']: check_graph(
                    model, {k: osp.join(out_dir, f)
                            for k, f in g['files'].items()},
                    inputs[g['name']], graphs[g['name'].split('_')[0]],
                    log=log, name=g['name'])
                for g in [summary['trunk'][0]] + summary['roi']}
        else:
            summary['check'] = {'model': check_graph(
                model, summary['files'], batches, log=log, name='model')}
    with open(osp.join(out_dir, f'{stem}_export.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    del runner
    finish_launch()


if __name__ == '__main__':
    main()

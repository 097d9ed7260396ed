"""Export a GPLQ W4A4 checkpoint to ONNX: the runtime model, its INT4
storage form and the FP32 baseline (see gplq_mm/deploy/export.py).

    python tools/export.py CONFIG CHECKPOINT [--out-dir DIR] [--check N]

Classifiers export image -> logits; detectors their backbone, image ->
feature maps (RoIAlign and NMS are not exported). The batch axis is dynamic;
the image size is the first test batch's (``--shape H W`` to set it).
``--check N`` compares onnxruntime with PyTorch on N test images: logits
(argmax agreement) or feature maps, and every quantizer's integer codes
(on onnxruntime's own input, and through the whole model). Evaluate an
exported classifier with
``tools/test.py CONFIG DIR/<name>.onnx``.
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch
from mmengine.runner import Runner

import gplq_mm  # noqa: F401  registers the GPLQ models and hook
from gplq_mm.deploy import (
    MIN_OPSET,
    check_opset,
    code_agreement,
    export_forms,
    load_storage,
    parity,
    session,
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
                   help='input size (default: the first test batch\'s)')
    p.add_argument('--check', type=int, default=0, metavar='N',
                   help='compare onnxruntime with PyTorch on N test images')
    add_runner_args(p)
    return p.parse_args()


def test_images(runner, model, n, shape=None, what=None):
    """Preprocessed test image tensors, ``n`` in all (resized to
    ``shape``); with ``what``, progress is logged every 30 s."""
    batches = take_images(Runner.build_dataloader(runner.cfg.test_dataloader),
                          lambda d: model.data_preprocessor(d, False), n)
    if what:
        batches = with_progress(batches, n, what, runner.logger.info, 30.0)
    for data in batches:
        x = data['inputs'].float()
        if shape is not None and tuple(x.shape[-2:]) != tuple(shape):
            x = torch.nn.functional.interpolate(x, size=tuple(shape),
                                                mode='bilinear')
        yield x


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
    example = next(test_images(runner, model, 1, args.shape))
    stem = osp.splitext(osp.basename(args.checkpoint))[0]
    try:
        forms = export_forms(model, out_dir, stem, example, opset=args.opset,
                             logger=log)
    except (ValueError, TypeError, NotImplementedError) as e:
        sys.exit(f'error: {e}')
    paths, sizes = forms['paths'], forms['bytes']
    summary = dict(files=paths, bytes=sizes, outputs=forms['outputs'],
                   input_shape=list(example.shape[1:]),
                   per_channel_layers=len(forms['per_channel']),
                   ratio_to_fp32={k: sizes[k] / sizes['fp32']
                                  for k in ('runtime', 'storage')})
    if args.check:
        shape = example.shape[-2:]
        sess = session(load_storage(paths['storage']), threads=None)
        summary['parity'] = parity(model, sess, test_images(
            runner, model, args.check, shape, 'outputs'))
        log(f'onnxruntime vs PyTorch on {summary["parity"]["images"]} test '
            f'images: {summary["parity"]}')
        agree = code_agreement(model, paths['runtime'], test_images(
            runner, model, args.check, shape, 'codes'))
        summary['codes'] = dict(
            quantizers=len(agree['same_input']),
            same_input_min=float(min(agree['same_input'])),
            end_to_end_min=float(min(agree['end_to_end'])),
            end_to_end_mean=float(sum(agree['end_to_end']) / len(
                agree['end_to_end'])))
        log(f'integer codes equal to PyTorch\'s: {summary["codes"]}')
    with open(osp.join(out_dir, f'{stem}_export.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    for k, p in paths.items():
        log(f'{k:8s} {sizes[k] / 2**20:8.2f} MiB  {p}')
    del runner
    finish_launch()


if __name__ == '__main__':
    main()

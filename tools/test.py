"""Evaluate a checkpoint with a config (mmpretrain / mmdet style).

An export of tools/export.py in place of the checkpoint runs in
onnxruntime (``--runtime openvino``: OpenVINO), through the same
dataloader, preprocessor and metric: a
classifier's ``.onnx`` file, or a detector's export directory (or its
``*_detector.json`` manifest; ``--form`` picks its runtime, storage or FP32
graphs).
"""
import argparse
import json
import os.path as osp
import sys

from mmengine.runner import Runner

import gplq_mm  # noqa: F401  registers the GPLQ models and hook
from gplq_mm.deploy import (
    DEPLOY_FORMS,
    RUNTIMES,
    detector_test_config,
    onnx_test_config,
)
from gplq_mm.probe.preflight import check_data_roots
from gplq_mm.utils import (
    add_runner_args,
    check_checkpoint_file,
    finish_launch,
    mmengine_checkpoint_globals,
    prepare_launch,
    runner_config,
)


def parse_args():
    p = argparse.ArgumentParser(description='Test a checkpoint')
    p.add_argument('config', help='test config file path')
    p.add_argument('checkpoint', help='checkpoint file, an exported '
                   'classifier (.onnx) or an exported detector (its '
                   'directory or *_detector.json)')
    p.add_argument('--form', choices=DEPLOY_FORMS, default='runtime',
                   help='which graphs of an exported detector to run')
    p.add_argument('--runtime', choices=RUNTIMES, default='onnxruntime',
                   help='where an export runs (OpenVINO in its default '
                   'precision: bf16 float layers on AMX CPUs)')
    p.add_argument('--out', help='write the metrics to this JSON file')
    add_runner_args(p)
    return p.parse_args()


def main():
    args = parse_args()
    if not osp.exists(args.checkpoint) and '://' not in args.checkpoint:
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} not found')
    is_onnx = args.checkpoint.endswith('.onnx')
    is_export = osp.isdir(args.checkpoint) or args.checkpoint.endswith(
        '_detector.json')
    # a truncated checkpoint, a detector's ONNX or a missing dataset file:
    # one clear line
    try:
        cfg = runner_config(args)
        check_data_roots(cfg, loaders=('test', ))
        if is_onnx:
            onnx_test_config(cfg, args.checkpoint, args.runtime)
        elif is_export:
            detector_test_config(cfg, args.checkpoint, args.form,
                                 args.runtime)
        else:
            if args.runtime != 'onnxruntime':
                raise ValueError('--runtime applies to an export (.onnx, '
                                 'a detector export), not a checkpoint')
            check_checkpoint_file(args.checkpoint)
            cfg.load_from = args.checkpoint
    except ValueError as e:
        sys.exit(f'error: {e}')
    prepare_launch(cfg)
    runner = Runner.from_cfg(cfg)
    with mmengine_checkpoint_globals():  # see tools/train.py
        metrics = runner.test()
    if args.out and runner.rank == 0:
        with open(args.out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
    del runner  # freed by finish_launch, before the interpreter exits
    finish_launch()


if __name__ == '__main__':
    main()

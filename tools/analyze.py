"""Quantization report of a GPLQ checkpoint: where the bits go.

    python tools/analyze.py CONFIG CHECKPOINT [--images N] [--out DIR]
                            [--fp FP32_CHECKPOINT]

Runs the model on N images of the config's validation data beside its float
teacher (the FP32 checkpoint the config names, or --fp), measures how far
the checkpoint's latent weights drifted from the teacher's, and writes
report.md, report.json and PNG plots to DIR (default: a folder `report`
beside the checkpoint). See gplq_mm.analysis.
"""
import argparse
import os.path as osp

from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner, load_checkpoint

import gplq_mm  # noqa: F401  registers the GPLQ models and hook
from gplq_mm.analysis import collect, write_report
from gplq_mm.utils import (
    add_runner_args,
    mmengine_checkpoint_globals,
    runner_config,
)
from gplq_mm.utils.data import take_images
from gplq_mm.utils.io import read_json


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='the GPLQ config the checkpoint came from')
    p.add_argument('checkpoint', help='a Stage-1 or W4A4 GPLQ checkpoint')
    p.add_argument('--images', type=int, default=64,
                   help='validation images to run (default 64)')
    p.add_argument('--out', help='output folder (default: <checkpoint '
                   'dir>/report)')
    p.add_argument('--fp', help='FP32 checkpoint of the teacher (default: '
                   'model.checkpoint of the config)')
    add_runner_args(p)
    return p.parse_args()


def _batches(cfg, model, n: int):
    """Preprocessed validation batches, ``n`` images in all."""
    loader = Runner.build_dataloader(cfg.val_dataloader)
    if n < 1 or n > len(loader.dataset):
        raise ValueError(f'--images={n}: use 1 .. {len(loader.dataset)} (the '
                         'validation set)')
    return list(take_images(loader, lambda d: model.data_preprocessor(
        d, False), n))


def main():
    args = parse_args()
    for path in (args.checkpoint, args.fp):
        if path is not None and not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint {path!r} not found')
    cfg = runner_config(args)
    if args.fp:
        cfg.model.checkpoint = args.fp
    # as the Runner does: the top-level data_preprocessor goes to the model
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
        model = MODELS.build(cfg.model)
        with mmengine_checkpoint_globals():
            model.init_weights()  # the FP32 teacher (and student)
            load_checkpoint(model, args.checkpoint, map_location='cpu',
                            strict=True)
        batches = _batches(cfg, model, args.images)
        stats_path = osp.join(osp.dirname(args.checkpoint),
                              'gplq_stats.json')
        r2 = read_json(stats_path).get('qwt_r2') if osp.isfile(
            stats_path) else None
        report = collect(model, batches, qwt_r2=r2)
    out = args.out or osp.join(osp.dirname(args.checkpoint), 'report')
    md = write_report(report, out)
    drift = report['weight_drift']
    print(f"weight drift from the FP32 checkpoint: MAE {drift['mae_mean']:.4g}"
          f", MSE {drift['mse_mean']:.4g} (mean over "
          f"{len(drift['layers'])} layers)")
    print(f'report: {md}')


if __name__ == '__main__':
    main()

"""tools/bench_speed.py in CI size: DeiT-S at 224 px, batch 1, one
iteration, bf16 only."""
import math
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))
import bench_speed  # noqa: E402


def test_bench_speed_rows_and_targets(capsys):
    rows, n_ptq = bench_speed.bench_model(
        'deit-s', torch.device('cpu'), batch=1, warmup=0, iters=1,
        compile_cfg=None, precisions=('bf16', ))
    assert set(rows) == {'fine-tune bf16', 'GPLQ Stage 1 bf16',
                         'Stage 2 (weight PTQ + QwT)', 'eval float',
                         'eval W4A4 fake-quant'}
    for k in ('fine-tune bf16', 'GPLQ Stage 1 bf16'):
        ms, mem = rows[k]
        assert ms > 0 and mem > 0, k  # autograd saved something
    summary = bench_speed.report('deit-s', rows, n_ptq, 1, False)
    out = capsys.readouterr().out
    assert '| GPLQ Stage 1 bf16 |' in out and 'targets:' in out
    assert summary['stage1'] == 'GPLQ Stage 1 bf16'
    assert summary['fine_tune'] == 'fine-tune bf16'
    for k in ('stage1_time_ratio', 'stage1_memory_ratio_vs_eager',
              'eval_ratio', 'projected_stage1_epoch_min'):
        assert math.isfinite(summary[k]) and summary[k] > 0, k
    assert summary['projected_stage1_epoch_min'] == \
        1_281_167 * rows['GPLQ Stage 1 bf16'][0] / 60000

"""The Stage-1 speed benchmark (gplq_mm.bench.speed, tools/bench_speed.py)
in CI size: DeiT-S at 224 px, batch 1, one iteration, bf16 only."""
import math

from gplq_mm.bench.speed import run


def test_bench_speed_rows_and_targets(capsys):
    res = run(['deit-s'], batch=1, iters=1, warmup=0,
              precisions=['bf16'])['models']['deit-s']
    out = capsys.readouterr().out
    assert '| GPLQ Stage 1 bf16 |' in out
    assert 'targets:' in out
    rows, summary = res['rows'], res['summary']
    assert set(rows) == {'fine-tune bf16', 'GPLQ Stage 1 bf16',
                         'Stage 2 (weight PTQ + QwT)', 'eval float',
                         'eval W4A4 fake-quant'}
    for k in ('fine-tune bf16', 'GPLQ Stage 1 bf16'):
        assert rows[k]['ms'] > 0 and rows[k]['mem_mb'] > 0, k
    # Stage 1 is compared with the float step of its own precision
    assert summary['stage1'] == 'GPLQ Stage 1 bf16'
    assert summary['fine_tune'] == 'fine-tune bf16'
    for k in ('stage1_time_ratio', 'stage1_memory_ratio_vs_eager',
              'eval_ratio', 'projected_stage1_epoch_min'):
        assert math.isfinite(summary[k]) and summary[k] > 0, k

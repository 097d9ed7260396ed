"""tools/bench_speed.py in CI size: DeiT-S at 224 px, batch 1, one
iteration, bf16 only, run as a user runs it."""
import json
import math
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_bench_speed_rows_and_targets(tmp_path):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, 'tools/bench_speed.py', '--models', 'deit-s',
         '--batch', '1', '--warmup', '0', '--iters', '1', '--precisions',
         'bf16', '--out', str(out)], cwd=ROOT, capture_output=True,
        text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '| GPLQ Stage 1 bf16 |' in proc.stdout
    assert 'targets:' in proc.stdout
    res = json.loads(out.read_text())['models']['deit-s']
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

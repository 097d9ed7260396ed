"""Stage 1 at the cost of ordinary fine-tuning? Measures, side by side in one
process, for DeiT-S and Swin-T at 224 px (mmpretrain models, random init,
random data): a fine-tuning step (fp32 and bf16 autocast; compiled with
--compile), the GPLQ Stage-1 step, Stage-2 time (weight PTQ + QwT), and
float vs fake-quant eval throughput. Prints ms/iter, images/s, memory and the
ratios to the float baselines, and the projected Stage-1 ImageNet epoch.

Memory: peak CUDA memory on a GPU; on CPU, the bytes autograd saves for
backward (activations, parameters excluded), a deterministic proxy.

    python tools/bench_speed.py                 # CPU: batch 4, 2 iterations
    python tools/bench_speed.py --batch 128     # GPU defaults when CUDA exists
"""
import argparse
import json
import os
import os.path as osp
import time
from contextlib import nullcontext

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope

import gplq_mm  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODEL_CFGS = {
    'deit-s': 'configs/gplq/gplq_deit-s-distilled_8xb16_w4a4_in1k.py',
    'swin-t': 'configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py',
}
IMAGENET = 1_281_167


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def measure(fn, device, warmup, iters):
    """(ms per call, memory in MiB) of ``fn``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    params = set()
    saved = {}
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(iters):
        if device.type == 'cpu' and i == 0:
            def pack(x):
                st = x.untyped_storage()
                if st.data_ptr() not in params:
                    saved[st.data_ptr()] = st.nbytes()
                return x
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                fn()
        else:
            fn()
    _sync(device)
    ms = (time.perf_counter() - t) / iters * 1000
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == \
        'cuda' else sum(saved.values()) / 2**20
    return ms, mem


def bench_model(name, device, batch, warmup, iters, compile_):
    from mmpretrain.structures import DataSample
    cfg = Config.fromfile(osp.join(ROOT, MODEL_CFGS[name]))
    cfg.model.checkpoint = None
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        fp = MODELS.build(cfg.model.architecture).to(device)
        gplq = MODELS.build(cfg.model).to(device)
    gplq.student.load_state_dict(fp.state_dict())
    gplq.teacher.load_state_dict(fp.state_dict())
    x = torch.randn(batch, 3, 224, 224, device=device)
    samples = [DataSample().set_gt_label(i % 1000) for i in range(batch)]
    gplq.calibrate([dict(inputs=x)])
    gplq.fit_pca([dict(inputs=x)])
    autocasts = {'fp32': nullcontext,
                 'bf16': lambda: torch.autocast(device.type, torch.bfloat16)}

    def train_step(model, opt, ac):
        def step():
            with ac():
                loss = sum(model.loss(x, samples).values())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    rows = {}
    fp.train()
    gplq.train()
    opt_fp = torch.optim.AdamW(fp.parameters(), lr=0)
    opt_q = torch.optim.AdamW(gplq.parameters(), lr=0)
    for prec, ac in autocasts.items():
        rows[f'fine-tune {prec}'] = measure(train_step(fp, opt_fp, ac),
                                            device, warmup, iters)
        rows[f'GPLQ Stage 1 {prec}'] = measure(train_step(gplq, opt_q, ac),
                                               device, warmup, iters)
        if compile_:  # compile the backbones in place (Module.compile)
            for name, mods in (('fine-tune', [fp.backbone]),
                               ('GPLQ Stage 1', [gplq.student.backbone,
                                                 gplq.teacher.backbone])):
                for m in mods:
                    m.compile()
                model, opt = (fp, opt_fp) if name == 'fine-tune' else \
                    (gplq, opt_q)
                try:
                    rows[f'{name} {prec} compiled'] = measure(
                        train_step(model, opt, ac), device, warmup, iters)
                except Exception as e:  # report and go on eagerly
                    print(f'WARNING: torch.compile failed for {name} '
                          f'{prec}: {type(e).__name__}: {str(e)[:200]}')
                for m in mods:
                    m._compiled_call_impl = None
    fp.eval()
    gplq.eval()
    n_ptq = 512 if device.type == 'cuda' else 2 * batch
    batches = [dict(inputs=x)] * max(1, n_ptq // batch)
    t = time.perf_counter()
    gplq.weight_ptq(batches)
    _sync(device)
    rows['Stage 2 (weight PTQ + QwT)'] = ((time.perf_counter() - t) * 1000,
                                          float('nan'))
    with torch.no_grad():
        rows['eval float'] = measure(lambda: fp(x), device, warmup, iters)
        rows['eval W4A4 fake-quant'] = measure(lambda: gplq(x), device,
                                               warmup, iters)
    return rows, n_ptq


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    cuda = torch.cuda.is_available()
    p.add_argument('--models', nargs='+', default=list(MODEL_CFGS),
                   choices=list(MODEL_CFGS))
    p.add_argument('--batch', type=int, default=128 if cuda else 4)
    p.add_argument('--iters', type=int, default=20 if cuda else 2)
    p.add_argument('--warmup', type=int, default=5 if cuda else 1)
    p.add_argument('--compile', action='store_true',
                   help='also time the compiled fine-tuning step')
    p.add_argument('--out', default='work_dirs/bench_speed.json')
    args = p.parse_args()
    device = torch.device('cuda' if cuda else 'cpu')
    dev_name = torch.cuda.get_device_name() if cuda else \
        f'CPU ({os.cpu_count()} cores)'
    print(f'device: {dev_name}, batch {args.batch}, {args.iters} iterations')
    result = dict(device=dev_name, batch=args.batch, models={})
    for name in args.models:
        rows, n_ptq = bench_model(name, device, args.batch, args.warmup,
                                  args.iters, args.compile)
        result['models'][name] = {k: dict(ms=v[0], mem_mb=v[1])
                                  for k, v in rows.items()}
        mem_name = 'peak MiB' if cuda else 'saved-for-backward MiB'
        print(f'\n{name}\n| step | ms/iter | images/s | {mem_name} | '
              'time vs fine-tune | memory vs fine-tune |')
        print('|---|---|---|---|---|---|')
        for k, (ms, mem) in rows.items():
            prec = 'bf16' if 'bf16' in k else 'fp32'
            if 'compiled' in k:
                prec += ' compiled'
            base = rows.get(f'fine-tune {prec}', (float('nan'), ) * 2) \
                if not k.startswith(('eval', 'Stage 2')) else \
                rows['eval float']
            ratio_t = '' if k.startswith('Stage 2') else f'{ms / base[0]:.2f}x'
            ratio_m = '' if mem != mem or base[1] != base[1] or not base[1] \
                else f'{mem / base[1]:.2f}x'
            ips = '' if k.startswith('Stage 2') else \
                f'{args.batch * 1000 / ms:.1f}'
            shown = f'{ms:.0f} ms total ({n_ptq} images)' if \
                k.startswith('Stage 2') else f'{ms:.1f}'
            print(f'| {k} | {shown} | {ips} | '
                  f'{"" if mem != mem else f"{mem:.0f}"} | {ratio_t} | '
                  f'{ratio_m} |')
        for prec in ('fp32', 'bf16'):
            ms = rows[f'GPLQ Stage 1 {prec}'][0]
            minutes = IMAGENET / args.batch * ms / 1000 / 60
            print(f'projected Stage-1 ImageNet epoch ({prec}, batch '
                  f'{args.batch}, this device): {minutes:.0f} min')
            result['models'][name][f'projected_epoch_min_{prec}'] = minutes
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwritten: {args.out}')


if __name__ == '__main__':
    main()

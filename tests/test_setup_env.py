"""tools/setup_env.sh: which mmcv ops it builds and how it tags the cache.

Nothing is built or installed: the environment's ``python`` is a stand-in
that answers the script's torch probe as a given machine would, records
every call (pip's too, with the build variables), and fakes pip's download
and wheel steps; ``nvcc`` is a stand-in on PATH. One test asks the real
environment's torch (``--print-tag``)."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'setup_env.sh')
BASE = 'py311-torch2.14.1'

STUB_PYTHON = r'''#!{python}
import json, os, sys, tarfile, zipfile
from pathlib import Path
args = sys.argv[1:]
code = sys.stdin.read() if args[:1] == ['-'] else ''
verb = next((a for a in args[2:] if not a.startswith('-')), None)
keys = ('FORCE_CUDA', 'MMCV_WITH_OPS', 'TORCH_CUDA_ARCH_LIST')
call = dict(argv=args, env={{k: os.environ.get(k) for k in keys}})
if args[:2] == ['-m', 'pip'] and verb == 'download':
    out = args[args.index('-d') + 1]
    os.makedirs(out + '/mmcv-2.1.0')
    with open(out + '/mmcv-2.1.0/setup.py', 'w') as f:
        f.write("cxx = ['-std=c++14']\n")
    with tarfile.open(out + '/mmcv-2.1.0.tar.gz', 'w:gz') as t:
        t.add(out + '/mmcv-2.1.0', 'mmcv-2.1.0')
elif args[:2] == ['-m', 'pip'] and verb == 'wheel':
    out = args[args.index('-w') + 1]
    call['setup.py'] = Path(args[-1] + '/setup.py').read_text()
    os.makedirs(out)
    cuda = os.environ['FORCE_CUDA'] == '1'
    lib = b'libc10_cuda.so' if cuda else b'libc10.so'
    with zipfile.ZipFile(out + '/mmcv-2.1.0-cp311-linux_x86_64.whl', 'w') as z:
        z.writestr('mmcv/_ext.cpython-311-x86_64-linux-gnu.so', lib)
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(json.dumps(call) + '\n')
if 'get_arch_list' in code:  # the torch probe
    print(os.environ['STUB_TORCH'])
elif 'zipfile' in code:  # whether cached wheels are CPU builds: for real
    sys.argv = args
    exec(code)
elif 'assert mmcv.__version__' in code:  # is the right mmcv installed?
    sys.exit(0 if os.environ['STUB_MMCV_OK'] == '1' else 1)
'''


def _wheel(path, lib):
    os.makedirs(osp.dirname(path))
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('mmcv/_ext.cpython-311-x86_64-linux-gnu.so', lib)


def _run(tmp_path, torch_line, nvcc=None, args=(), mmcv_ok=False, **env):
    """Run the script as on a machine whose torch probe says ``torch_line``
    (``<base> <cuda|-> <gpu 0|1> <archs>``), with ``nvcc`` of that release
    on PATH (or none). Returns the process and the stand-in's calls."""
    venv, stubs = tmp_path / 'venv', tmp_path / 'stubs'
    if not venv.exists():
        (venv / 'bin').mkdir(parents=True)
        stubs.mkdir()
        (venv / 'bin' / 'python').write_text(
            STUB_PYTHON.format(python=sys.executable))
        (venv / 'bin' / 'python').chmod(0o755)
    for f in stubs.iterdir():
        f.unlink()
    if nvcc:
        (stubs / 'nvcc').write_text(
            f'#!/bin/sh\necho "Cuda compilation tools, release {nvcc}, '
            f'V{nvcc}.93"\n')
        (stubs / 'nvcc').chmod(0o755)
    # the machine's own nvcc (if any) stays out of sight
    path = [str(stubs)] + [
        d for d in os.environ['PATH'].split(os.pathsep)
        if d and not osp.exists(osp.join(d, 'nvcc'))]
    log = tmp_path / 'calls.jsonl'
    if log.exists():
        log.unlink()
    run_env = {k: v for k, v in os.environ.items()
               if k not in ('TORCH_CUDA_ARCH_LIST', 'FORCE_CUDA')}
    run_env.update(VENV=str(venv), GPLQ_CACHE=str(tmp_path / 'cache'),
                   PATH=os.pathsep.join(path), STUB_LOG=str(log),
                   STUB_TORCH=torch_line, STUB_MMCV_OK=str(int(mmcv_ok)),
                   **env)
    proc = subprocess.run(['bash', SCRIPT, *args], env=run_env,
                          capture_output=True, text=True, timeout=120)
    calls = [json.loads(x) for x in log.read_text().splitlines()] \
        if log.exists() else []
    return proc, calls


@pytest.mark.parametrize('torch_line, nvcc, archs, tag, why', [
    # a GPU node: CUDA ops for torch's CUDA and the visible GPUs' archs
    (f'{BASE} 12.8 1 9.0+PTX', '12.8', None, f'{BASE}-cu128-sm90+PTX',
     'CUDA 12.8 (STUBS/nvcc, TORCH_CUDA_ARCH_LIST=9.0+PTX)'),
    (f'{BASE} 12.8 1 8.0;9.0+PTX', '12.8', None, f'{BASE}-cu128-sm80_90+PTX',
     'TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX'),
    # the user's arch list wins, and names the cache
    (f'{BASE} 12.8 1 9.0+PTX', '12.8', '8.0 8.6', f'{BASE}-cu128-sm80_86',
     'TORCH_CUDA_ARCH_LIST=8.0 8.6)'),
    # a GPU but no nvcc: CPU (and the install refuses, see below)
    (f'{BASE} 12.8 1 9.0+PTX', None, None, f'{BASE}-cpu',
     'CPU (nvcc is not on PATH)'),
    # nvcc without a GPU (this machine) and a CPU-only torch: CPU
    (f'{BASE}+cu130 13.0 0 -', '13.0', None, f'{BASE}+cu130-cpu',
     'CPU (torch sees no CUDA GPU)'),
    (f'{BASE}+cpu - 0 -', '13.0', None, f'{BASE}+cpu-cpu',
     'CPU (torch sees no CUDA GPU)'),
])
def test_print_tag(tmp_path, torch_line, nvcc, archs, tag, why):
    env = {} if archs is None else dict(TORCH_CUDA_ARCH_LIST=archs)
    proc, calls = _run(tmp_path, torch_line, nvcc, ['--print-tag'], **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == tag + '\n'
    assert why.replace('STUBS', str(tmp_path / 'stubs')) in proc.stderr
    assert [c['argv'] for c in calls] == [['-']]  # the probe, nothing else


def test_print_tag_with_this_environment():
    """The real probe, against the torch running these tests."""
    proc = subprocess.run(['bash', SCRIPT, '--print-tag'],
                          env=dict(os.environ, VENV=sys.prefix),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    base = (f'py{sys.version_info[0]}{sys.version_info[1]}-torch'
            f'{torch.__version__}')
    if not torch.cuda.is_available() or shutil.which('nvcc') is None:
        assert proc.stdout == f'{base}-cpu\n'
    else:
        assert proc.stdout.startswith(
            f'{base}-cu{torch.version.cuda.replace(".", "")}-sm')


def test_nvcc_of_another_cuda_is_one_line(tmp_path):
    proc, _ = _run(tmp_path, f'{BASE} 12.8 1 9.0+PTX', '12.6',
                   ['--print-tag'])
    assert proc.returncode == 1 and proc.stdout == ''
    assert proc.stderr.splitlines()[-1] == (
        f'[setup_env] error: {tmp_path}/stubs/nvcc is CUDA 12.6, torch was '
        'built with CUDA 12.8: put nvcc 12.8 on PATH')


def _pip(calls, verb, option=None):
    """The calls of ``pip <verb>`` (with ``option``)."""
    return [c for c in calls if c['argv'][:2] == ['-m', 'pip']
            and next(a for a in c['argv'][2:] if a[0] != '-') == verb
            and (option is None or option in c['argv'])]


def _mmcv_installs(calls):
    return [c['argv'] for c in _pip(calls, 'install', '--force-reinstall')]


def test_gpu_node_builds_cuda_ops_once(tmp_path):
    tag = f'{BASE}-cu128-sm90+PTX'
    wheels = tmp_path / 'cache' / f'mmcv-2.1.0-{tag}'
    proc, calls = _run(tmp_path, f'{BASE} 12.8 1 9.0+PTX', '12.8')
    assert proc.returncode == 0, proc.stderr
    (build, ) = _pip(calls, 'wheel')
    assert build['env'] == dict(FORCE_CUDA='1', MMCV_WITH_OPS='1',
                                TORCH_CUDA_ARCH_LIST='9.0+PTX')
    assert build['argv'][build['argv'].index('-w') + 1] == f'{wheels}.tmp'
    assert '-std=c++20' in build['setup.py']
    installs = _mmcv_installs(calls)
    assert installs[0][-1] == f'{wheels}/mmcv-2.1.0-cp311-linux_x86_64.whl'
    assert sorted(os.listdir(tmp_path / 'cache')) == [wheels.name]
    # a new environment on the same node: the cached wheel, no build
    proc, calls = _run(tmp_path, f'{BASE} 12.8 1 9.0+PTX', '12.8')
    assert proc.returncode == 0, proc.stderr
    assert not _pip(calls, 'wheel') and not _pip(calls, 'download')
    assert len(_mmcv_installs(calls)) == 1
    # the same environment again: nothing to do for mmcv
    proc, calls = _run(tmp_path, f'{BASE} 12.8 1 9.0+PTX', '12.8',
                       mmcv_ok=True)
    assert proc.returncode == 0, proc.stderr
    assert not _mmcv_installs(calls)


def test_gpu_without_nvcc_is_refused_before_building(tmp_path):
    proc, calls = _run(tmp_path, f'{BASE} 12.8 1 9.0+PTX', None)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        '[setup_env] error: torch sees a GPU (CUDA 12.8) but nvcc is not on '
        "PATH: mmcv's ops need nvcc 12.8")
    assert not _pip(calls, 'download') and not _mmcv_installs(calls)


@pytest.mark.parametrize('lib, reused', [(b'libc10.so', True),
                                         (b'libc10_cuda.so', False)])
def test_cpu_node_reuses_an_untagged_cpu_wheel(tmp_path, lib, reused):
    """A cache written before the tag had its CUDA marker: its wheel is
    reused for CPU ops when it is a CPU build, else CPU ops are built."""
    legacy = tmp_path / 'cache' / f'mmcv-2.1.0-{BASE}'
    _wheel(str(legacy / 'mmcv-2.1.0-cp311-linux_x86_64.whl'), lib)
    proc, calls = _run(tmp_path, f'{BASE} 13.0 0 -', '13.0')
    assert proc.returncode == 0, proc.stderr
    (install, ) = _mmcv_installs(calls)
    if reused:
        assert not _pip(calls, 'wheel')
        assert install[-1].startswith(f'{legacy}/')
    else:
        (build, ) = _pip(calls, 'wheel')
        assert build['env']['FORCE_CUDA'] == '0'
        assert install[-1].startswith(f'{legacy}-cpu/')

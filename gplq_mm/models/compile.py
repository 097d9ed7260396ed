"""Optional ``torch.compile`` of a GPLQ model's backbones, with a clean
eager fallback.

``torch.compile`` is not a free lunch on these models: it can fail while
tracing, while compiling, or only in the compiled backward (e.g. a wrong
gradient shape for a class token). :class:`CompiledRegions` compiles each
named submodule's ``forward`` on first use and, the first time a region runs
with gradients, probes one backward through it; on any failure it logs one
warning and runs every region of the model eagerly from then on.
"""
import contextlib
import functools
from typing import Callable, Dict, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import print_log

__all__ = ['CompiledRegions']


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


class CompiledRegions:
    """Compiles submodules' forwards while :meth:`active` is entered.

    Args:
        cfg (bool | dict): ``True`` or the keyword arguments of
            ``torch.compile`` (``mode``, ``dynamic``, ``backend``,
            ``fullgraph``, ``options``).

    Nothing is changed on the modules outside :meth:`active`: on entry
    their ``forward`` is patched and NumPy scalar attributes become Python
    numbers (mmpretrain's drop-path rates come from ``np.linspace``; dynamo
    treats NumPy scalars as tensors and breaks the graph at every ``if
    drop_prob == 0``); on exit both are restored, so state_dicts, deepcopy
    and calibration (which runs eagerly) are unaffected. mmengine and torch
    offer no seam to compile a submodule for a scope, hence the patch, kept
    here and nowhere else.
    """

    def __init__(self, cfg: Union[bool, dict]):
        if cfg is True:
            cfg = {}
        if not isinstance(cfg, dict):
            raise TypeError('compile_cfg must be a bool or a dict of '
                            f'torch.compile arguments, got {cfg!r}')
        self.kwargs = dict(cfg)
        self.failed = False
        self._fns: Dict[type, Callable] = {}
        self.probed = set()

    @contextlib.contextmanager
    def active(self, regions: Dict[str, nn.Module]):
        """Run ``regions`` (name -> module) compiled inside the context."""
        patched, scalars = [], []
        if not self.failed:
            for name, mod in regions.items():
                if mod is not None and 'forward' not in vars(mod):
                    mod.forward = functools.partial(self._call, name, mod)
                    patched.append(mod)
                    scalars += self._python_scalars(mod)
        try:
            yield
        finally:
            for mod in patched:
                del mod.forward
            for m, k, v in scalars:
                setattr(m, k, v)

    def _compiled(self, mod: nn.Module):
        cls = type(mod)
        if cls not in self._fns:  # unbound: the module is an argument
            self._fns[cls] = torch.compile(cls.forward, **self.kwargs)
        return self._fns[cls]

    @staticmethod
    def _python_scalars(mod: nn.Module) -> list:
        """Make NumPy scalar attributes of ``mod``'s modules Python numbers;
        returns ``(module, name, old value)`` to restore."""
        changed = []
        for m in mod.modules():
            for k, v in list(vars(m).items()):
                if isinstance(v, np.generic):
                    changed.append((m, k, v))
                    setattr(m, k, v.item())
        return changed

    def _call(self, name: str, mod: nn.Module, *args, **kwargs):
        eager = type(mod).forward
        if self.failed:
            return eager(mod, *args, **kwargs)
        try:
            fn = self._compiled(mod)
            if (name not in self.probed and torch.is_grad_enabled()
                    and mod.training):
                self._probe(fn, mod, args, kwargs)
                self.probed.add(name)
            return fn(mod, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure: go eager
            self.failed = True
            print_log(
                f'torch.compile failed on {name} ({type(mod).__name__}): '
                f'{type(e).__name__}: {str(e).strip()[:500]}. Running the '
                'model eagerly from now on (set model.compile_cfg=False to '
                'skip compiling).', logger='current', level=30)
            return eager(mod, *args, **kwargs)

    @staticmethod
    def _probe(fn, mod: nn.Module, args, kwargs) -> None:
        """One compiled forward and backward (``autograd.grad``: no
        ``.grad`` is touched) to surface backward failures here."""
        params = [p for p in mod.parameters() if p.requires_grad]
        if not params:
            return
        outs = [t for t in _tensors(fn(mod, *args, **kwargs))
                if t.requires_grad]
        if outs:
            torch.autograd.grad(sum(t.float().sum() for t in outs), params,
                                allow_unused=True)

"""The autograd functions of fake quantization: LSQ fake quantization, the
log grids, and the fused Stage-1 kernels (quantized Linear, quantized
attention) that save less for backward than the composed ops.

Their numerics are those of :mod:`gplq_mm.quant.functional`; every function
here equals the composed ops in forward and backward (tests compare them).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint

from .functional import (
    LOG_GRIDS,
    broadcast_shape,
    fake_quant,
    lsq_backward,
    lsq_grad_scale,
    step_dtype,
)

__all__ = ['lsq_fake_quant', 'log_fake_quant', 'lsq_linear', 'lsq_attention']


class _LSQFakeQuant(torch.autograd.Function):
    """LSQ fake quantization with a hand-written backward.

    Saved for backward: ``x`` and ``step``. ``x / s``, the rounding residual
    and the clamp masks are recomputed in backward; the composed ops keep
    them, about 3-4x the activation memory of this function.
    """

    @staticmethod
    def forward(ctx, x, step, qmin, qmax, grad_scale, shape):
        ctx.save_for_backward(x, step)
        ctx.args = (qmin, qmax, shape, grad_scale)
        return fake_quant(x, step.view(shape), qmin, qmax)

    @staticmethod
    def backward(ctx, grad_out):
        x, step = ctx.saved_tensors
        return lsq_backward(x, step, grad_out, *ctx.args,
                            *ctx.needs_input_grad[:2]) + (None, ) * 4


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                   axis: int = -1) -> torch.Tensor:
    """Fake quantization with LSQ gradients for ``x`` and ``step``.

    Forward: :func:`~gplq_mm.quant.functional.fake_quant`; backward:
    :func:`~gplq_mm.quant.functional.lsq_backward` with the scale
    ``lsq_grad_scale(x.numel() / step.numel(), qmax)``.

    Examples:
        >>> x = torch.tensor([0.26, -1.0, 0.9], requires_grad=True)
        >>> s = torch.tensor([0.1], requires_grad=True)
        >>> out = lsq_fake_quant(x, s, -8, 7)
        >>> out.sum().backward()
        >>> out.detach(), x.grad
        (tensor([ 0.3000, -0.8000,  0.7000]), tensor([1., 0., 0.]))
        >>> round(s.grad.item() / lsq_grad_scale(3, 7), 4)   # -0.6 g
        -0.6
    """
    shape = broadcast_shape(x.dim(), axis, step.numel())
    g = lsq_grad_scale(x.numel() // step.numel(), qmax)
    return _LSQFakeQuant.apply(x, step, qmin, qmax, g, shape)


class _LogFakeQuant(torch.autograd.Function):
    """A log grid, straight-through for x inside it; fixed step."""

    @staticmethod
    def forward(ctx, x, step, levels, shape, grid):
        ctx.save_for_backward(x, step)
        ctx.shape = shape
        return LOG_GRIDS[grid](x, step.to(step_dtype(x)).view(shape),
                               levels).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, step = ctx.saved_tensors
        inside = (x >= 0) & (x <= step.to(step_dtype(x)).view(ctx.shape))
        return grad_out * inside, None, None, None, None


def log_fake_quant(x: torch.Tensor, step: torch.Tensor, bits: int,
                   axis: int = -1, grid: str = 'log2') -> torch.Tensor:
    """A log grid of :data:`~gplq_mm.quant.functional.LOG_GRIDS`
    (``'log2'`` or ``'log_sqrt2'``) on ``2^bits`` codes, straight-through
    for ``x`` inside ``[0, step]``; the step is fixed.

    Examples:
        >>> log_fake_quant(torch.tensor([1.0, 0.3, 0.2, 0.1]),
        ...                torch.tensor([1.0]), bits=2)
        tensor([1.0000, 0.2500, 0.2500, 0.0000])
    """
    shape = broadcast_shape(x.dim(), axis, step.numel())
    return _LogFakeQuant.apply(x, step, 2**bits, shape, grid)


class _LSQLinear(torch.autograd.Function):
    """``linear(lsq_fake_quant(x), w, b)`` as one function.

    Saved for backward: ``x``, ``step`` and ``weight`` (a Parameter, no new
    memory). The quantized input that ``F.linear`` would keep, a second
    activation-sized tensor per layer, is recomputed in backward from ``x``.
    """

    @staticmethod
    def forward(ctx, x, step, weight, bias, qmin, qmax, grad_scale, shape):
        xq = fake_quant(x, step.view(shape), qmin, qmax)
        ctx.save_for_backward(x, step, weight)
        ctx.args = (qmin, qmax, shape, grad_scale)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return torch.nn.functional.linear(xq, weight.to(x.dtype),
                                          None if bias is None else
                                          bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        x, step, weight = ctx.saved_tensors
        qmin, qmax, shape, _ = ctx.args
        # Matmuls in grad_out's dtype: under autocast, the forward's.
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            xq = fake_quant(x, step.view(shape), qmin, qmax)
            grad_w = (g2.T @ xq.reshape(-1, xq.shape[-1]).to(g2.dtype)).to(
                weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            grad_b = g2.sum(0).to(ctx.bias_dtype)
        grad_xq = (grad_out @ weight.to(grad_out.dtype)).to(x.dtype)
        return lsq_backward(x, step, grad_xq, *ctx.args,
                            *ctx.needs_input_grad[:2]) + (grad_w, grad_b) + \
            (None, ) * 4


def lsq_linear(x: torch.Tensor, step: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor], qmin: int,
               qmax: int) -> torch.Tensor:
    """Fused ``F.linear(lsq_fake_quant(x, step, qmin, qmax), weight, bias)``
    with the step along the last dim (per input feature or per tensor).
    Same values and gradients, one activation-sized tensor less saved."""
    shape = broadcast_shape(x.dim(), -1, step.numel())
    g = lsq_grad_scale(x.numel() // step.numel(), qmax)
    return _LSQLinear.apply(x, step, weight, bias, qmin, qmax, g, shape)


def _head_shape(step: torch.Tensor) -> Tuple[int, ...]:
    """Broadcast shape of a per-head (or per-tensor) step over
    ``(B, heads, N, d)``."""
    return broadcast_shape(4, 1, step.numel())


def _attention_forward(q, k, v, steps, qkv_range, p_range, mult, lsq=False):
    """(qq, kq, vq, scores, p, pq, out) of quantized attention, the
    quantizers plain :func:`fake_quant` or, with ``lsq``,
    :func:`lsq_fake_quant` (then differentiable by autograd)."""
    def quant(x, s, qrange):
        if lsq:
            return lsq_fake_quant(x, s, *qrange, axis=1)
        return fake_quant(x, s.view(_head_shape(s)), *qrange)

    qq, kq, vq = (quant(x, s, qkv_range) for x, s in zip((q, k, v), steps))
    scores = (qq @ kq.transpose(-2, -1)) * mult  # (B, heads, N, N)
    p = scores.softmax(dim=-1)
    pq = quant(p, steps[3], p_range)
    return qq, kq, vq, scores, p, pq, pq @ vq


class _LSQAttention(torch.autograd.Function):
    """Quantized attention ``fq(softmax(fq(q) fq(k)^T * m)) @ fq(v)`` as one
    function (every ``fq`` LSQ, per head or per tensor).

    Saved for backward: q, k, v (views of the qkv projection's output) and
    the four steps. Nothing of size N x N: the scores, the softmax and its
    quantized copy are recomputed in backward (as flash attention does), under
    the forward's autocast state, so they are the forward's values bit for
    bit. The composed ops keep the fake-quantized q, k, v (another qkv-sized
    tensor) and two N x N tensors per layer.
    """

    @staticmethod
    def forward(ctx, q, k, v, sq, sk, sv, sp, qkv_range, p_range, mult):
        ctx.save_for_backward(q, k, v, sq, sk, sv, sp)
        ctx.qkv_range, ctx.p_range, ctx.mult = qkv_range, p_range, mult
        dev = q.device.type
        ctx.autocast = (dev, torch.get_autocast_dtype(dev),
                        torch.is_autocast_enabled(dev))
        return _attention_forward(q, k, v, (sq, sk, sv, sp), qkv_range,
                                  p_range, mult)[-1]

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, sq, sk, sv, sp = ctx.saved_tensors
        dev, dtype, enabled = ctx.autocast
        with torch.autocast(dev, dtype, enabled=enabled):
            qq, kq, vq, scores, p, pq, out = _attention_forward(
                q, k, v, (sq, sk, sv, sp), ctx.qkv_range, ctx.p_range,
                ctx.mult)
        need = ctx.needs_input_grad

        def lsq_grads(x, s, grad, qrange, need_x, need_s):
            return lsq_backward(
                x, s, grad, *qrange, _head_shape(s),
                lsq_grad_scale(x.numel() // s.numel(), qrange[1]), need_x,
                need_s)

        # out = pq @ vq in out's dtype (autocast's choice in forward).
        go = grad_out.to(out.dtype)
        grad_vq = (pq.to(out.dtype).transpose(-2, -1) @ go).to(vq.dtype)
        grad_pq = (go @ vq.to(out.dtype).transpose(-2, -1)).to(pq.dtype)
        grad_p, grad_sp = lsq_grads(p, sp, grad_pq, ctx.p_range, True,
                                    need[6])
        # softmax backward, in the softmax's dtype; scores = (qq kq^T) * m
        grad_s = (p * (grad_p - (grad_p * p).sum(-1, keepdim=True))).to(
            scores.dtype) * ctx.mult
        grad_qq = (grad_s @ kq.to(scores.dtype)).to(qq.dtype)
        grad_kq = (grad_s.transpose(-2, -1) @ qq.to(scores.dtype)).to(
            kq.dtype)
        (gq, gsq), (gk, gsk), (gv, gsv) = (
            lsq_grads(x, s, g, ctx.qkv_range, need[i], need[3 + i])
            for i, (x, s, g) in enumerate(((q, sq, grad_qq), (k, sk, grad_kq),
                                           (v, sv, grad_vq))))
        return gq, gk, gv, gsq, gsk, gsv, grad_sp, None, None, None


def lsq_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  steps: Sequence[torch.Tensor], qkv_range: Tuple[int, int],
                  p_range: Tuple[int, int], mult: float) -> torch.Tensor:
    """Quantized attention with LSQ gradients, nothing N x N saved.

    Same values and gradients as quantizing ``q, k, v`` (``(B, heads, N,
    d)``) with :func:`lsq_fake_quant`, then ``softmax(q k^T * mult)``,
    quantizing it, and multiplying by ``v``. ``steps`` are the q, k, v and
    softmax-output steps, each with one entry per head or one in all.

    Under ``torch.compile`` it is a checkpointed region of the composed ops
    instead: traced, the autograd function's recomputation would be merged
    with its forward and the N x N tensors saved; a checkpointed region is
    recomputed in backward by the compiler and fused there too.
    """
    if q.dim() != 4:
        raise ValueError(f'lsq_attention takes (B, heads, N, d) tensors, '
                         f'got q of shape {tuple(q.shape)}')
    qkv_range, p_range, mult = tuple(qkv_range), tuple(p_range), float(mult)
    if torch.compiler.is_compiling():
        def composed(*tensors):
            return _attention_forward(*tensors[:3], tensors[3:], qkv_range,
                                      p_range, mult, lsq=True)[-1]
        return torch.utils.checkpoint.checkpoint(composed, q, k, v, *steps,
                                                 use_reentrant=False)
    return _LSQAttention.apply(q, k, v, *steps, qkv_range, p_range, mult)

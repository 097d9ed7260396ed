import pytest
import torch
import torch.nn as nn

from gplq_mm.quant import (
    QuantConfig,
    QuantLinear,
    convert,
    iter_quantizers,
    revert,
    set_quant_state,
)
from gplq_mm.quant.layers import QuantConv2d, QuantQKV, is_quant_layer
from tests.backbones import (
    BACKBONES,
    build,
    flat,
    inputs,
    quant_cfg,
    quantized,
)

NAMES = sorted(BACKBONES)


@pytest.mark.parametrize('name', NAMES)
def test_quantizers_off_is_float_exactly(name):
    model, q, _ = quantized(name)
    x = inputs()
    ref = flat(model(x))
    set_quant_state(q, weight=False, act=False)
    assert torch.equal(flat(q(x)), ref)
    set_quant_state(q, weight=True, act=True)
    assert not torch.equal(flat(q(x)), ref)


@pytest.mark.parametrize('name', NAMES)
def test_every_site_is_quantized(name):
    model, blocks = build(name)
    q = convert(model, quant_cfg(blocks))
    kinds = {type(m) for m in q.modules()}
    assert {QuantLinear, QuantConv2d, QuantQKV} <= kinds
    names = [n for n, _ in iter_quantizers(q)]
    for op in ('q_quantizer', 'k_quantizer', 'v_quantizer', 'p_quantizer'):
        assert any(n.endswith(op) for n in names), op
    # No float Linear left inside the blocks.
    for n, m in q.named_modules():
        if any(n.startswith(b + '.') for b in blocks):
            assert type(m) is not nn.Linear, n
    pe = [m for n, m in q.named_modules()
          if isinstance(m, QuantConv2d) and 'patch_embed' in n]
    assert pe and pe[0].input_quantizer.bits == 8


@pytest.mark.parametrize('name', NAMES)
def test_convert_twice_equals_once(name):
    """A second convert changes nothing: same module types, same state
    (values too) and the same Parameter objects, the float model's."""
    model, blocks = build(name)
    params = dict(model.named_parameters())
    once = convert(model, quant_cfg(blocks))
    types = [type(m) for m in once.modules()]
    state = {k: v.clone() for k, v in once.state_dict().items()}
    objects = dict(once.named_parameters())
    twice = convert(once, quant_cfg(blocks))
    assert [type(m) for m in twice.modules()] == types
    after = twice.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert dict(twice.named_parameters()).keys() == objects.keys()
    assert all(p is objects[n] for n, p in twice.named_parameters())
    # every float Parameter is still the model's, under its float name
    assert all(objects[n] is p for n, p in params.items())


@pytest.mark.parametrize('name', NAMES)
def test_revert_restores_float(name):
    model, q, _ = quantized(name)
    set_quant_state(q, weight=True, act=True)
    r = revert(q)
    assert [type(m) for m in r.modules()] == [type(m) for m in model.modules()]
    assert list(r.state_dict()) == list(model.state_dict())
    x = inputs()
    assert torch.equal(flat(r(x)), flat(model(x)))


@pytest.mark.parametrize('name', NAMES)
def test_float_checkpoint_loads_strictly_and_state_round_trips(name):
    model, q, blocks = quantized(name)
    set_quant_state(q, weight=True, act=True)
    x = inputs()
    # float -> converted, strict
    fresh = convert(build(name, seed=5)[0], quant_cfg(blocks))
    fresh.load_state_dict(model.state_dict(), strict=True)
    set_quant_state(fresh, weight=False, act=False)
    assert torch.equal(flat(fresh(x)), flat(model(x)))
    # converted -> converted, strict, quantizer state included
    fresh.load_state_dict(q.state_dict(), strict=True)
    set_quant_state(fresh, weight=True, act=True)
    assert torch.equal(flat(fresh(x)), flat(q(x)))


@pytest.mark.parametrize('name', NAMES)
def test_steps_receive_gradients(name):
    _, q, _ = quantized(name)
    set_quant_state(q, weight=False, act=True)
    q.train()
    flat(q(inputs())).pow(2).sum().backward()
    for n, m in iter_quantizers(q, 'act'):
        assert m.step.grad is not None and m.step.grad.abs().sum() > 0, n
    for n, m in iter_quantizers(q, 'weight'):
        assert m.step.grad is None, n  # weight steps are fixed by default


def test_uninitialized_enabled_quantizer_raises():
    lin = convert(nn.Sequential(nn.Linear(4, 4)))
    set_quant_state(lin, act=True)
    with pytest.raises(RuntimeError, match='not initialized'):
        lin(torch.randn(2, 4))


@pytest.mark.parametrize('field,value,match', [
    ('w_bits', 9, r'w_bits=9 .*2\.\.8'),
    ('a_bits', 1, r'a_bits=1 .*2\.\.8'),
    ('attn_bits', 2.5, r'attn_bits=2\.5'),
    ('act_granularity', 'row', r"act_granularity='row'.*'channel'"),
    ('attn_granularity', 'row', r"attn_granularity='row'.*'head', 'token'"),
    ('bogus', 1, r"no field\(s\) \['bogus'\]"),
])
def test_bad_config_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig.from_any({field: value})


def test_include_matching_nothing_errors():
    with pytest.raises(ValueError, match="'nothing.*' matches no module"):
        convert(nn.Sequential(nn.Linear(2, 2)), dict(include=['nothing.*']))


@pytest.mark.parametrize('name', NAMES)
def test_deployable_folds_every_per_channel_step(name):
    """Deployable mode: per-channel input steps only where a LayerNorm alone
    feeds the layer; after fold_act_steps every Linear / Conv input has one
    step, and the W32A4 output is the same function (the steps are made
    uneven first, so the fold is not a no-op)."""
    from gplq_mm.quant import calibration, fold_act_steps
    from gplq_mm.quant.hosts import fold_pairs
    model, blocks = build(name)
    q = convert(model, dict(quant_cfg(blocks), deployable=True))
    with calibration(q):
        q(inputs(seed=2, n=4))
    consumers = {lin for _, lin in fold_pairs(q)}
    per_channel = set()
    g = torch.Generator().manual_seed(0)
    for n, m in q.named_modules():
        if isinstance(m, (QuantLinear, QuantConv2d)):
            iq = m.input_quantizer
            if iq.step.numel() > 1:
                per_channel.add(n)
                with torch.no_grad():
                    iq.step.mul_(torch.rand(iq.step.shape, generator=g) + 0.5)
    assert per_channel and per_channel <= consumers
    if 'swin' in name:  # PatchMerging's norm -> reduction folds too
        assert any(n.endswith('reduction') for n in per_channel)
    set_quant_state(q, weight=False, act=True)
    x = inputs()
    before = flat(q(x))
    assert fold_act_steps(q) == len(per_channel)
    after = flat(q(x))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    for n in per_channel:
        step = q.get_submodule(n).input_quantizer.step
        assert torch.all(step == step[0]), n
    assert fold_act_steps(q) == len(per_channel)  # idempotent: steps equal
    torch.testing.assert_close(flat(q(x)), after, rtol=1e-5, atol=1e-5)


def _demo_detector() -> nn.Module:
    """The demo Mask R-CNN (random weights, seed 0), in eval mode."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile('configs/demo/mask-rcnn_swin-tiny_digits_fp.py')
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg.model).eval()


def test_deployable_folds_the_detector_relu_and_fpn_pairs():
    """The demo Mask R-CNN at scope full: the FPN laterals (after the
    backbone's output LayerNorms), the second box fc and the mask convs
    (after ReLU) keep per-channel steps, fold into their producers, and the
    W32A4 outputs stay the same."""
    from gplq_mm.quant import calibration, fold_act_steps
    from gplq_mm.quant.hosts import fold_pairs
    det = _demo_detector()
    convert(det, dict(include=('backbone', 'neck', 'roi_head'),
                      deployable=True))
    x = torch.randn(1, 3, 64, 64)
    heads = det.roi_head
    g = torch.Generator().manual_seed(0)
    box_in = torch.randn(6, heads.bbox_head.in_channels, 7, 7, generator=g)
    mask_in = torch.randn(6, heads.mask_head.in_channels, 14, 14,
                          generator=g)

    def outputs():
        return torch.cat([flat(det.extract_feat(x)),
                          flat(heads.bbox_head(box_in)),
                          flat(heads.mask_head(mask_in))])

    with calibration(det):
        outputs()
    for _, lin in fold_pairs(det):
        with torch.no_grad():
            step = det.get_submodule(lin).input_quantizer.step
            step.mul_(torch.rand(step.shape, generator=g) + 0.5)
    set_quant_state(det, weight=False, act=True)
    with torch.no_grad():
        before = outputs()
        names = {lin for _, lin in fold_pairs(det)}
        assert {'neck.lateral_convs.0.conv', 'roi_head.bbox_head.shared_fcs.1',
                'roi_head.mask_head.convs.3.conv',
                'roi_head.mask_head.upsample',
                'roi_head.mask_head.conv_logits'} <= names
        assert fold_act_steps(det) == len(names)
        after = outputs()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    per_channel = {n for n, m in det.named_modules()
                   if is_quant_layer(m) and m.input_quantizer.step.numel() > 1}
    assert per_channel == names


@pytest.mark.parametrize('deployable', [True, False])
def test_deployable_rpn_heads_share_one_unsigned_input_quantizer(deployable):
    """mmdet's RPN: relu(rpn_conv) feeds rpn_cls and rpn_reg. Deployable:
    one unsigned quantizer for both (so one QuantizeLinear follows the
    conv), calibrated on the tensor they read, saved under both names and
    loaded back; paper-faithful: one each, signed."""
    from mmdet.models.dense_heads import RPNHead

    from gplq_mm.quant import calibration
    torch.manual_seed(0)
    head = RPNHead(in_channels=8, feat_channels=8,
                   anchor_generator=dict(type='AnchorGenerator', scales=[8],
                                         ratios=[0.5, 1.0, 2.0],
                                         strides=[4]))
    convert(head, dict(deployable=deployable))
    cls_q, reg_q = (head.get_submodule(f'rpn_{k}').input_quantizer
                    for k in ('cls', 'reg'))
    assert (cls_q is reg_q) == deployable
    assert cls_q.signed != deployable
    seen = {}
    for k in ('cls', 'reg'):
        getattr(head, f'rpn_{k}').register_forward_pre_hook(
            lambda m, args, k=k: seen.setdefault(k, args[0].detach()))
    with calibration(head):
        head.forward_single(torch.randn(2, 8, 6, 6))
    assert torch.equal(seen['cls'], seen['reg'])  # one tensor, two readers
    if deployable:  # per tensor, min-max, on the unsigned grid
        assert float(cls_q.step.detach()) == pytest.approx(
            float(seen['cls'].max()) / 15, rel=1e-5)
    else:  # per channel
        assert cls_q.step.numel() == 8
    state = head.state_dict()
    assert 'rpn_reg.input_quantizer.step' in state
    fresh = RPNHead(in_channels=8, feat_channels=8,
                    anchor_generator=dict(type='AnchorGenerator',
                                          scales=[8], ratios=[0.5, 1.0, 2.0],
                                          strides=[4]))
    convert(fresh, dict(deployable=deployable))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.rpn_reg.input_quantizer.step, reg_q.step)


@pytest.mark.parametrize('deployable', [True, False])
def test_deployable_fpn_outputs_are_requantized_at_8_bits(deployable):
    """The demo Mask R-CNN, deployable: each FPN output conv quantizes its
    output per tensor at 8 bits (its own quantizer), so one QuantizeLinear
    follows it; the features RoIAlign reads are on that grid, and the RPN
    conv keeps its own 4-bit input quantizer."""
    from gplq_mm.quant import calibration
    det = _demo_detector()
    convert(det, dict(include=('backbone', 'neck', 'rpn_head'),
                      deployable=deployable))
    outs = [c.conv.output_quantizer for c in det.neck.fpn_convs]
    if not deployable:
        assert outs == [None] * len(outs)
        return
    rpn_q = det.rpn_head.rpn_conv.input_quantizer
    assert len({id(q) for q in outs}) == len(outs) and rpn_q not in outs
    assert {(q.bits, q.signed, q.step.numel()) for q in outs} == {
        (8, True, 1)} and rpn_q.bits == 4
    x = torch.randn(1, 3, 64, 64)
    with calibration(det):
        det.rpn_head(det.extract_feat(x))
    set_quant_state(det, weight=False, act=True)
    with torch.no_grad():
        feats = det.extract_feat(x)
    # the levels the output convs make (a last one may be a max-pool)
    for q, f in zip(outs, feats):
        assert torch.equal(q(f), f)


@pytest.mark.parametrize('name', NAMES)
def test_token_granularity_gives_one_attention_step_per_token(name):
    """attn_granularity='token': q, k, v steps per token, the softmax's per
    query row, for the host registry's token count; the fused and the
    composed paths agree (per-token steps take the composed one)."""
    from gplq_mm.quant import calibration, composed_paths, quantize_weights
    from gplq_mm.quant.hosts import attention_tokens
    model, blocks = build(name)
    q = convert(model, dict(quant_cfg(blocks), attn_granularity='token'))
    attns = [(n, m) for n, m in q.named_modules()
             if isinstance(m, QuantQKV)]
    assert attns
    for n, qkv in attns:
        tokens = attention_tokens(q, n.rsplit('.', 1)[0])
        assert tokens in (16, 17, 18)  # 4x4 windows; 16 patches + 1 or 2
        for op in qkv.operand_quantizers:
            assert op.step.numel() == tokens and op.axis == -3
    softmax = [m for n, m in iter_quantizers(q) if n.endswith('p_quantizer')]
    assert softmax and all(p.axis == -2 and p.step.numel() in (16, 17, 18)
                           for p in softmax)
    x = inputs()
    with calibration(q):
        q(inputs(seed=2, n=4))
    quantize_weights(q)
    set_quant_state(q, weight=True, act=True)
    out = flat(q(x))
    with composed_paths(q):
        torch.testing.assert_close(flat(q(x)), out)
    assert torch.isfinite(out).all()


def test_token_granularity_without_a_token_rule_is_refused():
    from gplq_mm.quant.hosts import HOSTS
    model, blocks = build('mmpretrain_vit')
    spec = next(s for s in HOSTS if s.tokens and 'VisionTransformer' in s.name
                and 'mmpretrain' in s.name)
    rule = spec.tokens.pop(
        'mmpretrain.models.backbones.vision_transformer.VisionTransformer')
    try:
        with pytest.raises(ValueError, match='no host rule gives the token '
                           "count of attention 'layers.0.attn'"):
            convert(model, dict(quant_cfg(blocks), attn_granularity='token'))
    finally:
        spec.tokens[
            'mmpretrain.models.backbones.vision_transformer.VisionTransformer'
        ] = rule

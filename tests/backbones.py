"""Tiny instances of every supported backbone (CPU, float32)."""
import torch


def mmpretrain_vit():
    from mmpretrain.models import VisionTransformer
    return VisionTransformer(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=64),
        img_size=32, patch_size=8, out_type='cls_token'), ['layers']


def mmpretrain_deit():
    from mmpretrain.models import DistilledVisionTransformer
    return DistilledVisionTransformer(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=64),
        img_size=32, patch_size=8), ['layers']


def mmpretrain_swin():
    from mmpretrain.models import SwinTransformer
    return SwinTransformer(
        arch=dict(embed_dims=16, depths=[2, 2], num_heads=[2, 4]),
        img_size=32, patch_size=2, window_size=4, out_indices=(1, )), \
        ['stages']


def mmdet_swin():
    from mmdet.models.backbones import SwinTransformer
    return SwinTransformer(
        pretrain_img_size=32, embed_dims=16, depths=(2, 2),
        num_heads=(2, 4), window_size=4, strides=(2, 2), patch_size=2,
        out_indices=(0, 1)), ['stages']


def timm_vit():
    import timm
    return timm.create_model(
        'vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=8,
        embed_dim=32, depth=2, num_heads=2, num_classes=5), ['blocks']


def timm_swin():
    import timm
    return timm.create_model(
        'swin_tiny_patch4_window7_224', pretrained=False, img_size=32,
        patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
        window_size=4, num_classes=5), ['layers']


BACKBONES = dict(mmpretrain_vit=mmpretrain_vit,
                 mmpretrain_deit=mmpretrain_deit,
                 mmpretrain_swin=mmpretrain_swin, mmdet_swin=mmdet_swin,
                 timm_vit=timm_vit, timm_swin=timm_swin)


def build(name, seed=0):
    torch.manual_seed(seed)
    model, blocks = BACKBONES[name]()
    if hasattr(model, 'init_weights'):
        model.init_weights()
    model.eval()  # some hosts' train() returns None
    return model, blocks


def inputs(seed=1, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def flat(out):
    """Backbone outputs (tensor / tuples of tensors) as one flat tensor."""
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    return torch.cat([flat(o) for o in out])


def quant_cfg(blocks):
    """Convert config of a tiny backbone: its blocks and patch embedding."""
    return dict(include=blocks + ['patch_embed'])


def quantized(name):
    """``(float, converted, blocks)``: the converted copy with calibrated
    activations and weights (quantizers still off)."""
    import copy

    from gplq_mm.quant import calibration, convert, quantize_weights
    model, blocks = build(name)
    q = convert(copy.deepcopy(model), quant_cfg(blocks))
    with calibration(q):
        q(inputs(seed=2, n=4))
    quantize_weights(q)
    return model, q, blocks

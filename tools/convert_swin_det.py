"""Convert a Swin authors' detector checkpoint (Swin-Transformer-Object-
Detection, mmdet 2.x keys) into one that loads strictly into the mmdet 3
model of the same architecture (e.g. configs/gplq_det/_base_/cascade-*):

    python tools/convert_swin_det.py SRC.pth DST.pth

The backbone's keys go through mmdet's own ``swin_converter`` (the one
mmdet's SwinTransformer applies to classification checkpoints); the neck's
and heads' keys are the same in both versions and pass unchanged.
"""
import argparse
from collections import OrderedDict

import torch

from gplq_mm.utils import mmengine_checkpoint_globals


def convert(state: dict) -> OrderedDict:
    from mmdet.models.backbones.swin import swin_converter
    backbone = OrderedDict((k[len('backbone.'):], v) for k, v in state.items()
                           if k.startswith('backbone.'))
    if not backbone:
        raise ValueError('no backbone.* keys: not a detector checkpoint')
    if any(k.startswith('stages.') for k in backbone):
        raise ValueError('the backbone keys are already mmdet 3.x ones '
                         '(backbone.stages.*)')
    out = OrderedDict(swin_converter(backbone))  # adds 'backbone.' back
    out.update((k, v) for k, v in state.items()
               if not k.startswith('backbone.'))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src')
    p.add_argument('dst')
    args = p.parse_args()
    with mmengine_checkpoint_globals():
        ckpt = torch.load(args.src, map_location='cpu')
    state = ckpt.get('state_dict', ckpt)
    torch.save({'state_dict': convert(state),
                'meta': {'converted_from': args.src}}, args.dst)
    print(f'{args.dst}: {len(state)} tensors converted')


if __name__ == '__main__':
    main()

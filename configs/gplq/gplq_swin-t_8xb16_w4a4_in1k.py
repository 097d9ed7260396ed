# GPLQ W4A4 for swin-t on ImageNet-1k (FP32 81.2, GPLQ W4A4 79.5, W3A3 74.2 (paper)).
# Stage 1 (W32A4 activation-only QAT, 1 epoch) then Stage 2 (weight PTQ +
# QwT), one call; the recipe is gplq_mm.recipes.classification:
#   bash tools/dist_train.sh configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py 8
#   bash tools/dist_test.sh configs/gplq/gplq_swin-t_8xb16_w4a4_in1k.py \
#       work_dirs/gplq_swin-t_8xb16_w4a4_in1k/gplq_w4a4.pth 8
# Data: mmpretrain's ImageNet layout under data/imagenet (the host config).
_base_ = 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'
from gplq_mm.recipes import classification  # noqa: E402

globals().update(classification(
    _base_,
    checkpoint='https://download.openmmlab.com/mmclassification/v0/swin-transformer/swin_tiny_224_b16x64_300e_imagenet_20210616_090925-66df6be6.pth',
    lr=5e-6))  # 8 GPUs x 16 images; other GPU counts: configs/gplq/README.md

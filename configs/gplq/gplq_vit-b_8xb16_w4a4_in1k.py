# GPLQ W4A4 for vit-b on ImageNet-1k (mmpretrain FP32 82.4; the paper reports no ViT-B).
# Stage 1 (W32A4 activation-only QAT, 1 epoch) then Stage 2 (weight PTQ +
# QwT), one call; the recipe is gplq_mm.recipes.classification:
#   bash tools/dist_train.sh configs/gplq/gplq_vit-b_8xb16_w4a4_in1k.py 8
#   bash tools/dist_test.sh configs/gplq/gplq_vit-b_8xb16_w4a4_in1k.py \
#       work_dirs/gplq_vit-b_8xb16_w4a4_in1k/gplq_w4a4.pth 8
# Data: mmpretrain's ImageNet layout under data/imagenet (the host config).
_base_ = 'mmpretrain::vision_transformer/vit-base-p16_32xb128-mae_in1k.py'
from gplq_mm.recipes import classification  # noqa: E402

globals().update(classification(
    _base_,
    checkpoint='https://download.openmmlab.com/mmclassification/v0/vit/vit-base-p16_pt-32xb128-mae_in1k_20220623-4c544545.pth',
    lr=5e-6))  # 8 GPUs x 16 images; other GPU counts: configs/gplq/README.md

# GPLQ W4A4 for swin-l-in21k-pre on ImageNet-1k (FP32 86.3, GPLQ W4A4 85.3 (paper, Swin-L 22k)).
# Stage 1 (W32A4 activation-only QAT, 1 epoch) then Stage 2 (weight PTQ +
# QwT), one call; the recipe is gplq_mm.recipes.classification:
#   bash tools/dist_train.sh configs/gplq/gplq_swin-l-in21k-pre_8xb16_w4a4_in1k.py 8
#   bash tools/dist_test.sh configs/gplq/gplq_swin-l-in21k-pre_8xb16_w4a4_in1k.py \
#       work_dirs/gplq_swin-l-in21k-pre_8xb16_w4a4_in1k/gplq_w4a4.pth 8
# Data: mmpretrain's ImageNet layout under data/imagenet (the host config).
# The checkpoint is mmpretrain's swin-large_in21k-pre-3rdparty_in1k (86.24).
_base_ = 'mmpretrain::swin_transformer/swin-large_16xb64_in1k.py'
from gplq_mm.recipes import classification  # noqa: E402

globals().update(classification(
    _base_,
    checkpoint='https://download.openmmlab.com/mmclassification/v0/swin-transformer/convert/swin_large_patch4_window7_224_22kto1k-5f0996db.pth',
    lr=5e-6))  # 8 GPUs x 16 images; other GPU counts: configs/gplq/README.md

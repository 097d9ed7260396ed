# Linear probe of a frozen ImageNet backbone on Food-101 (101 classes;
# train 75,750 / test 25,250 images), the protocol of GPLQ's Table 1
# (_base_/probe_runtime.py):
#   python tools/train.py configs/probe/linear-probe_food-101.py \
#       --cfg-options model.source=CONFIG model.checkpoint=CKPT
# Data: mmpretrain's Food101 layout under
# data/food-101 (configs/probe/README.md).
_base_ = './_base_/probe_runtime.py'

num_classes = 101
data_root = 'data/food-101'
model = dict(num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(
    dataset=dict(type='Food101', data_root=data_root, split='train'))
val_dataloader = dict(
    dataset=dict(type='Food101', data_root=data_root, split='test'))
test_dataloader = val_dataloader

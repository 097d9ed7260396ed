# Linear probe of a frozen ImageNet backbone on Flowers-102 (102 classes;
# trainval 2,040 / test 6,149 images), the protocol of GPLQ's Table 1
# (_base_/probe_runtime.py):
#   python tools/train.py configs/probe/linear-probe_flowers-102.py \
#       --cfg-options model.source=CONFIG model.checkpoint=CKPT
# Data: mmpretrain's Flowers102 layout under
# data/Flowers102 (configs/probe/README.md).
_base_ = './_base_/probe_runtime.py'

num_classes = 102
data_root = 'data/Flowers102'
model = dict(num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(
    dataset=dict(type='Flowers102', data_root=data_root, split='trainval'))
val_dataloader = dict(
    dataset=dict(type='Flowers102', data_root=data_root, split='test'))
test_dataloader = val_dataloader

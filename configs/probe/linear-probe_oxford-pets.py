# Linear probe of a frozen ImageNet backbone on Oxford-IIIT Pets (37 classes;
# trainval 3,680 / test 3,669 images), the protocol of GPLQ's Table 1
# (_base_/probe_runtime.py):
#   python tools/train.py configs/probe/linear-probe_oxford-pets.py \
#       --cfg-options model.source=CONFIG model.checkpoint=CKPT
# Data: mmpretrain's OxfordIIITPet layout under
# data/Oxford-IIIT_Pets (configs/probe/README.md).
_base_ = './_base_/probe_runtime.py'

num_classes = 37
data_root = 'data/Oxford-IIIT_Pets'
model = dict(num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(
    dataset=dict(type='OxfordIIITPet', data_root=data_root, split='trainval'))
val_dataloader = dict(
    dataset=dict(type='OxfordIIITPet', data_root=data_root, split='test'))
test_dataloader = val_dataloader

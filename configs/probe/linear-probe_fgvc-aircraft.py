# Linear probe of a frozen ImageNet backbone on FGVC-Aircraft (100 classes;
# trainval 6,667 / test 3,333 images), the protocol of GPLQ's Table 1
# (_base_/probe_runtime.py):
#   python tools/train.py configs/probe/linear-probe_fgvc-aircraft.py \
#       --cfg-options model.source=CONFIG model.checkpoint=CKPT
# Data: mmpretrain's FGVCAircraft layout under
# data/fgvc-aircraft-2013b (configs/probe/README.md).
_base_ = './_base_/probe_runtime.py'

num_classes = 100
data_root = 'data/fgvc-aircraft-2013b'
model = dict(num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(
    dataset=dict(type='FGVCAircraft', data_root=data_root, split='trainval'))
val_dataloader = dict(
    dataset=dict(type='FGVCAircraft', data_root=data_root, split='test'))
test_dataloader = val_dataloader

# Linear probe of a frozen ImageNet backbone on Stanford Cars (196 classes;
# train 8,144 / test 8,041 images), the protocol of GPLQ's Table 1
# (_base_/probe_runtime.py):
#   python tools/train.py configs/probe/linear-probe_stanford-cars.py \
#       --cfg-options model.source=CONFIG model.checkpoint=CKPT
# Data: mmpretrain's StanfordCars layout under
# data/Stanford_Cars (configs/probe/README.md).
_base_ = './_base_/probe_runtime.py'

num_classes = 196
data_root = 'data/Stanford_Cars'
model = dict(num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(
    dataset=dict(type='StanfordCars', data_root=data_root, split='train'))
val_dataloader = dict(
    dataset=dict(type='StanfordCars', data_root=data_root, split='test'))
test_dataloader = val_dataloader

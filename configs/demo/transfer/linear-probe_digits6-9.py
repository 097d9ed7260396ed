# The probe protocol (configs/probe/_base_/probe_runtime.py) through
# tools/train.py / tools/test.py on the transfer demo's downstream digits 6-9
# (make demo-transfer writes data/transfer/), e.g. of the upstream FP32 ViT:
#   python tools/train.py configs/demo/transfer/linear-probe_digits6-9.py \
#       --cfg-options model.checkpoint=work_dirs/demo/transfer/fp/epoch_60.pth
_base_ = ['../../probe/_base_/probe_runtime.py']

num_classes = 4
data_root = 'data/transfer/digits'
model = dict(source='configs/demo/transfer/vit-tiny_digits0-5_fp.py',
             num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
_data = dict(type='CustomDataset', data_root=data_root, data_prefix='',
             pipeline=test_pipeline)
train_dataloader = dict(num_workers=0, dataset=dict(
    _data, ann_file='meta/train.txt'))
val_dataloader = dict(num_workers=0, dataset=dict(
    _data, ann_file='meta/test.txt'))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))  # 4 classes: no top-5
test_evaluator = val_evaluator

# Linear probe on NOAH's 16-shot split of one fine-grained dataset, laid out
# as DTL reads it (gplq_mm.probe.AnnotationList; configs/probe/README.md):
#   python tools/train.py configs/probe/linear-probe_fewshot-16shot.py \
#       --cfg-options model.source=CONFIG model.checkpoint=CKPT
# Another dataset or shot count: edit the three names below (or copy the
# file); --cfg-options on them does not reach the dataloaders. DTL reports
# the mean test accuracy over the train lists of seeds 0, 1 and 2:
#   --cfg-options train_dataloader.dataset.seed=1
_base_ = './_base_/probe_runtime.py'

# fgvc-aircraft (100 classes), food101 (101), oxford-flowers102 (102),
# oxford-pets (37), standford-cars (196; NOAH's spelling)
dataset = 'fgvc-aircraft'
num_classes = 100
num_shot = 16
data_root = 'data/fgfs'

model = dict(num_classes=num_classes)
data_preprocessor = dict(num_classes=num_classes)
# AnnotationList refuses a num_classes other than the dataset's
train_dataloader = dict(
    dataset=dict(type='AnnotationList', data_root=data_root,
                 dataset=dataset, num_classes=num_classes, split='train',
                 num_shot=num_shot, seed=0))
# val_meta.list (DTL keeps the epoch best on it; this loop validates once,
# at the end) and test_meta.list (what DTL reports)
val_dataloader = dict(
    dataset=dict(type='AnnotationList', data_root=data_root,
                 dataset=dataset, num_classes=num_classes, split='val'))
test_dataloader = dict(
    dataset=dict(type='AnnotationList', data_root=data_root,
                 dataset=dataset, num_classes=num_classes, split='test'))

# The transfer demo's positive control: the upstream FP32 ViT deliberately
# drifted, trained on from its final checkpoint for 100 more epochs at a
# constant 4e-3 (twice its peak LR). If the probes cannot tell this model
# from FP32, they cannot detect drift.
_base_ = ['./vit-tiny_digits0-5_fp.py']

load_from = 'work_dirs/demo/transfer/fp/epoch_60.pth'
max_epochs = 100
optim_wrapper = dict(optimizer=dict(lr=4e-3))
param_scheduler = []
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(checkpoint=dict(interval=max_epochs))

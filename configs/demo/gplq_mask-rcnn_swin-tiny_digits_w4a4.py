# GPLQ W4A4 of the demo's float Mask R-CNN (mask-rcnn_swin-tiny_digits_fp.py).
# scope='backbone' quantizes the Swin backbone; scope='full' (see
# gplq_mask-rcnn_swin-tiny_digits_w4a4_full.py) the whole detector.
_base_ = ['./mask-rcnn_swin-tiny_digits_fp.py']
custom_imports = dict(imports=['gplq_mm'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='GPLQDetector',
    architecture={{_base_.model}},
    checkpoint='work_dirs/demo/det_fp/epoch_24.pth',
    scope='backbone',
    quant_cfg=dict(w_bits=4, a_bits=4))

# Paper (COCO): AdamW, constant LR 5e-6, 1 image per GPU, 1 epoch of
# train2017 (~117k iterations on 1 GPU). The demo's 300 images give 75
# iterations per epoch at batch 4; it trains 3 epochs at 1e-4 instead.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.0),
    clip_grad=dict(max_norm=10.0))
param_scheduler = []
train_cfg = dict(max_epochs=3, val_interval=3)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1))
custom_hooks = [
    dict(type='GPLQHook', calib_images=64, ptq_images=256)
]

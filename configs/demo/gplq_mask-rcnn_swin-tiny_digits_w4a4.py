# GPLQ W4A4 of the demo's float Mask R-CNN (mask-rcnn_swin-tiny_digits_fp.py).
# scope='backbone' quantizes the Swin backbone; scope='full' (see
# gplq_mask-rcnn_swin-tiny_digits_w4a4_full.py) the whole detector.
_base_ = ['./mask-rcnn_swin-tiny_digits_fp.py']
from gplq_mm.recipes import detection  # noqa: E402

# Paper (COCO): constant LR 5e-6, 1 image per GPU, 1 epoch of train2017
# (~117k iterations on 1 GPU). The demo's 300 images give 75 iterations per
# epoch at batch 4; it trains 3 epochs at 1e-4 instead.
globals().update(detection(
    _base_, checkpoint='work_dirs/demo/det_fp/epoch_24.pth', lr=1e-4,
    batch_size=4, epochs=3, calib_images=64, ptq_images=256,
    clip_grad=dict(max_norm=10.0), checkpoint_interval=75))

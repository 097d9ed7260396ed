# GPLQ W4A4 of the demo's float ViT (configs/demo/vit-tiny_digits_fp.py).
# Stage 1 (W32A4, activation-only QAT) then Stage 2 (weight PTQ + QwT) in one
# tools/train.py run; tools/test.py evaluates <work_dir>/gplq_w4a4.pth.
_base_ = ['./vit-tiny_digits_fp.py']
from gplq_mm.recipes import classification  # noqa: E402

# The paper: 1 epoch of ImageNet (10,009 iterations at batch 128, LR 5e-6).
# The digits train set is 1,438 images, so one epoch at batch 16 is 90
# iterations; the demo trains 5 epochs (450 iterations) at a constant 1e-4
# instead: the same recipe scaled to a dataset ~900x smaller.
globals().update(classification(
    _base_, checkpoint='work_dirs/demo/fp/epoch_60.pth', lr=1e-4, epochs=5,
    pca_images=1024, checkpoint_interval=90, log_interval=None))

# GPLQ W4A4 of the transfer demo's upstream ViT (digits 0-5): the demo's
# recipe (configs/demo/gplq_vit-tiny_digits_w4a4.py) on the upstream data.
# Calibration, PCA, Stage 1 and Stage 2 read the upstream train set only.
_base_ = ['./vit-tiny_digits0-5_fp.py']
from gplq_mm.recipes import classification  # noqa: E402

globals().update(classification(
    _base_, checkpoint='work_dirs/demo/transfer/fp/epoch_60.pth', lr=1e-4,
    epochs=5, pca_images=800, checkpoint_interval=1000, log_interval=None))

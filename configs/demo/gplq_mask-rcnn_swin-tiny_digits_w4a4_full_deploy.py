# GPLQ W4A4 of the whole demo detector in deployable mode (model.method=
# 'gplq-deploy': one activation step per tensor, the form onnxruntime runs on
# integer kernels). `make demo-export-det` trains it, exports it as graphs
# with tools/export.py and evaluates the export with tools/test.py.
_base_ = ['./gplq_mask-rcnn_swin-tiny_digits_w4a4_full.py']
model = dict(method='gplq-deploy')

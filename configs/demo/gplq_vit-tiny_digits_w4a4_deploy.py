# GPLQ W4A4 of the demo ViT in deployable mode (model.method='gplq-deploy':
# quant_cfg.deployable, the form onnxruntime runs on integer kernels; see
# gplq_mm/quant/convert.py). `make demo-export` trains it, exports it with
# tools/export.py and evaluates the ONNX model with tools/test.py.
_base_ = ['./gplq_vit-tiny_digits_w4a4.py']
model = dict(method='gplq-deploy')

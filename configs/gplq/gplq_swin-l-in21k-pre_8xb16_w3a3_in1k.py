# GPLQ W3A3 (weights and activations at 3 bits; patch-embed input 8 bits).
_base_ = './gplq_swin-l-in21k-pre_8xb16_w4a4_in1k.py'
model = dict(quant_cfg=dict(w_bits=3, a_bits=3))

# The transfer demo's upstream model (tools/demo_transfer.py): the demo's
# float ViT trained on digits 0-5 only; digits 6-9 and MNIST 6-9 stay unseen
# for the probes (data/transfer, gplq_mm.demo.transfer).
_base_ = ['../vit-tiny_digits_fp.py']

data_root = 'data/transfer/upstream'
classes = [str(i) for i in range(6)]
model = dict(head=dict(num_classes=6))
data_preprocessor = dict(num_classes=6)
train_dataloader = dict(dataset=dict(data_root=data_root,
                                     metainfo=dict(classes=classes)))
val_dataloader = dict(dataset=dict(data_root=data_root,
                                   metainfo=dict(classes=classes)))
test_dataloader = val_dataloader

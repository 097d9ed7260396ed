"""Evaluating an exported classifier through the config's own dataloader,
preprocessor and metric (``tools/test.py CONFIG MODEL.onnx``)."""
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import MODEL_WRAPPERS, MODELS

from ..utils.samples import set_cls_predictions
from .session import node_threads, run_batched, session
from .storage import open_model

__all__ = ['ONNXClassifier', 'ONNXEvalWrapper', 'onnx_test_config']


@MODELS.register_module()
class ONNXClassifier(BaseModel):
    """An exported classifier (``tools/export.py``) as an mmengine model:
    the host's data preprocessor runs in PyTorch, the ONNX graph in
    onnxruntime, and predictions are written as mmpretrain's heads write
    them (``pred_score`` = softmax of the logits, ``pred_label``), so the
    config's metric measures it exactly like the PyTorch model.

    Args:
        onnx_file (str): The ``.onnx`` model (runtime or FP32 form; a storage
            model is loaded through :func:`~gplq_mm.deploy.load_storage`).
        data_preprocessor (dict): The host classifier's preprocessor.
        threads (int, optional): The runtime's intra-op threads.
            Defaults to None: all cores in one process; under a launcher,
            the node's cores shared among its processes (``LOCAL_WORLD_SIZE``).
        runtime (str): ``'onnxruntime'`` or ``'openvino'`` (in its default
            precision). Defaults to ``'onnxruntime'``.
    """

    def __init__(self, onnx_file: str, data_preprocessor: dict,
                 threads: Optional[int] = None,
                 runtime: str = 'onnxruntime', init_cfg=None):
        data_preprocessor = dict(data_preprocessor)
        # as mmpretrain's ImageClassifier builds its own
        data_preprocessor.setdefault('type', 'mmpretrain.ClsDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.onnx_file = onnx_file
        self.session = session(open_model(onnx_file), node_threads(threads),
                               runtime=runtime)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's output (:func:`run_batched`)."""
        return torch.from_numpy(run_batched(
            self.session, inputs.float().cpu().numpy())[0])

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'predict'):
        logits = self.logits(inputs)
        if mode == 'tensor':
            return logits
        if mode != 'predict':
            raise ValueError(f'ONNXClassifier evaluates only (mode='
                             f"'predict' / 'tensor'), got mode={mode!r}")
        return set_cls_predictions(logits, data_samples)


@MODEL_WRAPPERS.register_module()
class ONNXEvalWrapper(nn.Module):
    """What the Runner wraps an :class:`ONNXClassifier` in under a launcher
    (``tools/dist_test.sh``), in place of DDP, which refuses a module with
    no trainable parameter; evaluation syncs no gradient. Each rank runs its
    share of the test set; the evaluator gathers the results."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def val_step(self, data):
        return self.module.val_step(data)

    def test_step(self, data):
        return self.module.test_step(data)


def onnx_test_config(cfg, onnx_file: str, runtime: str = 'onnxruntime'):
    """``cfg`` (a GPLQ classifier config) rewritten to evaluate
    ``onnx_file`` in ``runtime`` with :class:`ONNXClassifier`: the same
    dataloader, preprocessor and metric; the GPLQ hooks and the checkpoint
    load go."""
    model = cfg.model
    if model.get('type') != 'GPLQClassifier':
        raise ValueError(
            f'{onnx_file}: tools/test.py evaluates exported classifiers '
            f'(model.type GPLQClassifier), this config builds '
            f'{model.get("type")}. A detector export holds the backbone only: '
            'tools/export.py --check N reports its feature-map parity')
    pre = (model['architecture'].get('data_preprocessor')
           or model.get('data_preprocessor') or cfg.get('data_preprocessor')
           or {})
    cfg.model = dict(type='ONNXClassifier', onnx_file=onnx_file,
                     data_preprocessor=dict(pre), runtime=runtime)
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks') or []
                        if not str(h.get('type', '')).startswith('GPLQ')]
    cfg.load_from = None
    cfg.model_wrapper_cfg = dict(type='ONNXEvalWrapper')  # used under DDP
    return cfg

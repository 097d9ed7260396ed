"""An exported detector (:mod:`.det_export`) as an mmengine model:
``tools/test.py CONFIG EXPORT_DIR`` evaluates it with the config's
dataloader, preprocessor and ``CocoMetric``.

The graphs run in onnxruntime or OpenVINO; everything between them is
mmdet's own code, on the host detector built from the config (its weights
unused): the RPN head's ``predict_by_feat`` (anchors, decoding, NMS), the
RoI head's ``predict`` (RoIAlign, box decoding, the Cascade stages, mask
paste) and the detector's ``add_pred_to_datasample``.

mmdet has no public seam for "run this head elsewhere": its RoI heads call
their heads in ``_bbox_forward`` / ``_mask_forward``, which mmdet's own
subclasses (HTC, SCNet, ...) override to change how heads are called. The
two classes below do the same, and only that; nothing else of mmdet's is
replaced.
"""
import collections
import os.path as osp
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
from mmengine.model import BaseModel
from mmengine.registry import MODELS

from .det_export import (
    DEPLOY_FORMS,
    check_architecture,
    describe,
    find_manifest,
    host_config,
    read_manifest,
)
from .session import node_threads, run_batched, session
from .storage import open_model

__all__ = ['ONNXDetector', 'ONNXStandardRoIHead', 'ONNXCascadeRoIHead',
           'Graph']


class Graph:
    """One exported graph in a session (:func:`session`): tensors in, tensors
    out (any first-axis size; a graph traced with a fixed batch runs in
    chunks, :func:`run_batched`). Its wall time adds up in
    ``timing[kind]``."""

    def __init__(self, path: str, threads: Optional[int], kind: str,
                 timing: Dict[str, float], runtime: str = 'onnxruntime'):
        self.path, self.kind, self.timing = path, kind, timing
        self.session = session(open_model(path), threads, runtime=runtime)

    def __call__(self, x: torch.Tensor) -> List[torch.Tensor]:
        t0 = time.perf_counter()
        x = x.detach().float().cpu().numpy()  # from any device
        outs = run_batched(self.session, np.ascontiguousarray(x))
        self.timing[self.kind] += time.perf_counter() - t0
        return [torch.from_numpy(o) for o in outs]


class _Graphs:
    """Set on an ONNX RoI head: its stages' box and mask graphs, and the
    detector's timing."""

    def __init__(self, bbox: List[Graph], mask: List[Graph],
                 timing: Dict[str, float]):
        self.bbox, self.mask, self.timing = bbox, mask, timing


def _timed_mask_stage(predict_mask):
    """``predict_mask`` of an ONNX RoI head, its wall time (mask RoIAlign,
    the graphs, the paste) added to ``timing['mask_stage']``."""
    def fn(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = predict_mask(self, *args, **kwargs)
        self.graphs.timing['mask_stage'] += time.perf_counter() - t0
        return out
    return fn


def _box(graph: Graph, feats: torch.Tensor) -> Dict:
    cls_score, bbox_pred = graph(feats)
    return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=feats)


@MODELS.register_module()
class ONNXStandardRoIHead(StandardRoIHead):
    """mmdet's StandardRoIHead with its box and mask heads run as graphs
    (``self.graphs``, set by :class:`ONNXDetector`); RoIAlign, decoding and
    the mask paste are its own."""
    graphs: Optional[_Graphs] = None

    def _bbox_forward(self, x, rois):
        ext = self.bbox_roi_extractor
        return _box(self.graphs.bbox[0], ext(x[:ext.num_inputs], rois))

    def _mask_forward(self, x, rois=None, pos_inds=None, bbox_feats=None):
        if rois is None:
            raise ValueError('the exported mask head takes RoIs (test time)')
        ext = self.mask_roi_extractor
        feats = ext(x[:ext.num_inputs], rois)
        return dict(mask_preds=self.graphs.mask[0](feats)[0],
                    mask_feats=feats)

    predict_mask = _timed_mask_stage(StandardRoIHead.predict_mask)


@MODELS.register_module()
class ONNXCascadeRoIHead(CascadeRoIHead):
    """mmdet's CascadeRoIHead with each stage's box and mask head run as
    graphs (as :class:`ONNXStandardRoIHead`)."""
    graphs: Optional[_Graphs] = None

    def _bbox_forward(self, stage, x, rois):
        ext = self.bbox_roi_extractor[stage]
        return _box(self.graphs.bbox[stage], ext(x[:ext.num_inputs], rois))

    def _mask_forward(self, stage, x, rois):
        ext = self.mask_roi_extractor[stage]
        feats = ext(x[:ext.num_inputs], rois)
        return dict(mask_preds=self.graphs.mask[stage](feats)[0])

    predict_mask = _timed_mask_stage(CascadeRoIHead.predict_mask)


@MODELS.register_module()
class ONNXDetector(BaseModel):
    """A detector exported by ``tools/export.py``, as an mmengine model.

    Args:
        manifest (str): The export's ``*_detector.json`` (or its directory).
        architecture (dict): The host detector's config (the GPLQ config's
            ``model.architecture``): its preprocessor, post-processing and
            test settings run here; it must describe the exported graphs.
        form (str): ``'runtime'`` (W4A4), ``'storage'`` (its INT4 files) or
            ``'fp32'``.
        threads (int, optional): Intra-op threads per graph.
            Defaults to None: all cores in one process; under a launcher,
            the node's cores shared among its processes.
        runtime (str): ``'onnxruntime'`` or ``'openvino'`` (in its default
            precision), for every graph. Defaults to ``'onnxruntime'``.
    """

    def __init__(self, manifest: str, architecture: dict,
                 form: str = 'runtime', threads: Optional[int] = None,
                 runtime: str = 'onnxruntime', init_cfg=None):
        if form not in DEPLOY_FORMS:
            raise ValueError(f'form={form!r}: use one of {DEPLOY_FORMS}')
        arch = host_config(architecture)
        super().__init__(data_preprocessor=arch.get('data_preprocessor'),
                         init_cfg=init_cfg)
        self.manifest_file = find_manifest(manifest)
        m = read_manifest(self.manifest_file)
        root = osp.dirname(self.manifest_file)
        host = MODELS.build(arch)
        host.eval()
        check_architecture(m, describe(host), self.manifest_file)
        # Not a submodule: no state to save or sync, post-processing only.
        object.__setattr__(self, 'host', host)
        threads = node_threads(threads)
        self.timing = collections.defaultdict(float)

        def graph(g, kind):
            return Graph(osp.join(root, g['files'][form]), threads, kind,
                         self.timing, runtime)

        self.trunks = sorted(
            ((tuple(g['canvas']), graph(g, 'trunk')) for g in m['trunk']),
            key=lambda t: t[0][0] * t[0][1])
        roi = {g['name']: graph(g, g['name'].rstrip('0123456789'))
               for g in m['roi']}
        host.roi_head.graphs = _Graphs(
            *([roi[k] for k in sorted(roi) if k.startswith(kind)]
              for kind in ('bbox', 'mask')), self.timing)
        self.levels = m['architecture']['levels']
        self.form = form

    def canvas(self, h: int, w: int):
        """The smallest exported canvas that holds an ``h x w`` batch and its
        trunk."""
        for size, trunk in self.trunks:
            if h <= size[0] and w <= size[1]:
                return size, trunk
        raise ValueError(
            f'a batch of {h} x {w} does not fit the exported canvases '
            f'{[s for s, _ in self.trunks]}: export one that holds it '
            '(tools/export.py --shape H W)')

    def trunk(self, inputs: torch.Tensor):
        """The trunk on ``inputs`` zero-padded to its canvas: the FPN levels,
        and the RPN head's scores and deltas per level."""
        (ch, cw), graph = self.canvas(*inputs.shape[-2:])
        x = torch.nn.functional.pad(
            inputs.float().cpu(), (0, cw - inputs.shape[-1],
                                   0, ch - inputs.shape[-2]))
        outs = graph(x)
        n = self.levels
        return tuple(outs[:n]), outs[n:2 * n], outs[2 * n:3 * n], (ch, cw)

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'predict'):
        if mode != 'predict':
            raise ValueError('ONNXDetector evaluates only (mode='
                             f"'predict'), got mode={mode!r}")
        return self.predict(inputs, data_samples)

    def parts(self) -> Dict[str, float]:
        """Wall seconds per image of each part since the last call (then
        reset): ``trunk``, ``bbox`` and ``mask`` (the graphs), ``paste``
        (the mask stage around its graphs: mask RoIAlign, paste), ``glue``
        (the rest: anchors, proposal decoding and NMS, box RoIAlign and
        decoding, pre- and post-processing here) and ``total``; and
        ``detections`` per image (the mask head and paste work per
        detection)."""
        t = dict(self.timing)
        self.timing.clear()
        n = max(t.pop('images', 0), 1)
        parts = {k: t.get(k, 0.) for k in ('trunk', 'bbox', 'mask')}
        parts['paste'] = t.get('mask_stage', 0.) - parts['mask']
        parts['glue'] = t.get('total', 0.) - sum(parts.values())
        parts['total'] = t.get('total', 0.)
        parts['detections'] = t.get('detections', 0.)
        return {k: v / n for k, v in parts.items()}

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples):
        """As mmdet's ``TwoStageDetector.predict``, the trunk's graph in
        place of the backbone, neck and RPN head's forward, the RoI heads'
        graphs in place of theirs."""
        t0 = time.perf_counter()
        results = self._predict(inputs, data_samples)
        self.timing['total'] += time.perf_counter() - t0
        self.timing['images'] += len(inputs)
        self.timing['detections'] += sum(len(s.pred_instances)
                                         for s in results)
        return results

    def _predict(self, inputs: torch.Tensor, data_samples):
        feats, scores, deltas, canvas = self.trunk(inputs)
        for s in data_samples:  # what the trunk saw
            s.set_metainfo(dict(batch_input_shape=canvas))
        metas = [s.metainfo for s in data_samples]
        proposals = self.host.rpn_head.predict_by_feat(
            scores, deltas, batch_img_metas=metas, rescale=False)
        results = self.host.roi_head.predict(feats, proposals, data_samples,
                                             rescale=True)
        return self.host.add_pred_to_datasample(data_samples, results)

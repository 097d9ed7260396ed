"""Split export of a two-stage detector (Mask R-CNN, Cascade Mask R-CNN).

The quantized compute runs as ONNX graphs; between them mmdet's own code
runs unchanged (anchors, proposal decoding and NMS, RoIAlign, box decoding,
mask paste; :mod:`.det_runtime`):

* ``trunk``: the image batch -> the FPN levels (``feat<i>``) and the RPN
  head's class scores and box deltas per level (``rpn_cls<i>``,
  ``rpn_reg<i>``), traced at a fixed image size, the *canvas*: a batch is
  zero-padded at the bottom and right to it, as mmdet's preprocessor pads
  a batch to its largest image (several canvases may be exported, e.g. a
  landscape and a portrait one; the smallest that holds a batch runs it);
* ``bbox<s>``: stage ``s``'s box head, RoI features -> ``cls_score``,
  ``bbox_pred``; dynamic RoI axis;
* ``mask<s>``: stage ``s``'s mask head, RoI features -> ``mask_preds``;
  dynamic RoI axis.

Each graph comes in the three forms of :func:`~.export.export_forms`
(runtime, storage, FP32). A manifest (``<stem>_detector.json``) names the
files and describes the architecture they were exported from, which
:func:`~.det_runtime.detector_test_config` checks a config against.
"""
import copy
import glob
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import ConfigDict

from ..quant.registry import class_key, is_a
from ..utils.io import read_json
from .export import MIN_OPSET, check_exportable, export_forms

__all__ = ['MANIFEST_FORMAT', 'ROI_HEADS', 'Trunk', 'check_detector',
           'describe', 'detector_graphs', 'roi_graphs', 'roi_inputs',
           'trunk_outputs', 'export_detector', 'manifest_path',
           'graph_inputs', 'find_manifest', 'read_manifest', 'host_config',
           'check_architecture', 'detector_test_config', 'DEPLOY_FORMS']

MANIFEST_FORMAT = 'gplq_mm detector export v1'
DEPLOY_FORMS = ('runtime', 'storage', 'fp32')  # the files of each graph
_TWO_STAGE = 'mmdet.models.detectors.two_stage.TwoStageDetector'
# RoI head class -> the runtime class that runs its heads as graphs
ROI_HEADS = {
    'mmdet.models.roi_heads.standard_roi_head.StandardRoIHead':
    'ONNXStandardRoIHead',
    'mmdet.models.roi_heads.cascade_roi_head.CascadeRoIHead':
    'ONNXCascadeRoIHead',
}


def _exact_key(mod: nn.Module) -> str:
    return class_key(type(mod))


def check_detector(det: nn.Module) -> None:
    """Raise a ValueError naming the cause when ``det`` (an mmdet detector)
    has no export rule: it must be a two-stage detector with an RPN, and an
    RoI head of a class in :data:`ROI_HEADS` (not a subclass: HTC, SCNet
    and others change how the heads are called) with no shared head."""
    name = type(det).__name__
    if not is_a(det, _TWO_STAGE):
        raise ValueError(
            f'{name} has no export rule: tools/export.py exports two-stage '
            'detectors (an RPN, then RoI heads: Mask R-CNN, Cascade Mask '
            'R-CNN)')
    if not getattr(det, 'with_rpn', False):
        raise ValueError(f'{name} takes precomputed proposals (no RPN head): '
                         'no export rule')
    roi = det.roi_head
    if _exact_key(roi) not in ROI_HEADS:
        known = sorted(k.rsplit('.', 1)[1] for k in ROI_HEADS)
        raise ValueError(f'{name}.roi_head is a {type(roi).__name__}, which '
                         f'has no export rule; exported: {known}')
    if getattr(roi, 'with_shared_head', False):
        raise ValueError(f'{name}.roi_head has a shared head: no export rule')


def _stages(roi: nn.Module, attr: str) -> List[nn.Module]:
    mod = getattr(roi, attr, None)
    if mod is None:
        return []
    return list(mod) if isinstance(mod, nn.ModuleList) else [mod]


def roi_graphs(det: nn.Module) -> List[Tuple[str, nn.Module, nn.Module]]:
    """``(name, head, its RoI extractor)`` of each RoI graph, in order:
    ``bbox0``, ... then ``mask0``, ... (one per Cascade stage)."""
    roi = det.roi_head
    out = []
    for kind in ('bbox', 'mask'):
        heads = _stages(roi, f'{kind}_head')
        extractors = _stages(roi, f'{kind}_roi_extractor')
        if heads and len(extractors) == 1 < len(heads):  # a shared one
            extractors = extractors * len(heads)
        out += [(f'{kind}{s}', h, e)
                for s, (h, e) in enumerate(zip(heads, extractors))]
    return out


def detector_graphs(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of each graph of ``model`` (a GPLQ detector):
    ``'trunk'`` (:class:`Trunk`), then the RoI heads (:func:`roi_graphs`)."""
    det = model.student
    return [('trunk', Trunk(det))] + [(k, h) for k, h, _ in roi_graphs(det)]


def describe(det: nn.Module) -> Dict:
    """What the graphs of ``det`` depend on, to check a config against an
    export: the detector's and RoI head's classes, the stages, the classes
    each head predicts, whether it predicts masks, the FPN levels and the
    anchors per location."""
    roi = det.roi_head
    boxes = _stages(roi, 'bbox_head')
    # the exported class, also for the runtime's subclass of it
    roi_cls = next((c for c in type(roi).__mro__ if class_key(c) in
                    ROI_HEADS), type(roi))
    return dict(
        detector=type(det).__name__, roi_head=roi_cls.__name__,
        stages=len(boxes), num_classes=[h.num_classes for h in boxes],
        with_mask=bool(getattr(roi, 'with_mask', False)),
        levels=len(det.rpn_head.prior_generator.strides),
        anchors=det.rpn_head.num_base_priors)


class Trunk(nn.Module):
    """Image batch -> FPN levels, then the RPN head's class scores and box
    deltas per level, flattened into one tuple (:func:`trunk_outputs`)."""

    def __init__(self, det: nn.Module):
        super().__init__()
        self.backbone, self.neck, self.rpn_head = (
            det.backbone, det.neck if det.with_neck else None, det.rpn_head)

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = self.backbone(img)
        if self.neck is not None:
            feats = self.neck(feats)
        scores, deltas = self.rpn_head(feats)
        return (*feats, *scores, *deltas)


def trunk_outputs(levels: int) -> List[str]:
    """The trunk graph's output names for ``levels`` FPN levels."""
    return [f'{k}{i}' for k in ('feat', 'rpn_cls', 'rpn_reg')
            for i in range(levels)]


def _example_boxes(h: int, w: int) -> torch.Tensor:
    """A few boxes of several sizes over an ``h x w`` image (x1, y1, x2, y2):
    RoIs for tracing a head, which computes each RoI alone."""
    f = torch.tensor([[0, 0, .5, .5], [.25, .25, .75, .75], [0, 0, 1, 1],
                      [.5, .5, 1, 1], [.1, .6, .3, .9], [.6, .1, .9, .2]])
    return f * torch.tensor([w, h, w, h], dtype=torch.float32)


def roi_inputs(extractor: nn.Module, feats: Sequence[torch.Tensor],
               boxes: List[torch.Tensor]) -> torch.Tensor:
    """RoI features of ``boxes`` (one ``(n, 4)`` tensor per image) by
    ``extractor`` (mmdet's RoIAlign over the levels it reads), as the RoI
    head computes them."""
    from mmdet.structures.bbox import bbox2roi
    return extractor(tuple(feats[:extractor.num_inputs]), bbox2roi(boxes))


def manifest_path(out_dir: str, stem: str) -> str:
    return osp.join(out_dir, f'{stem}_detector.json')


def export_detector(model: nn.Module, out_dir: str, stem: str,
                    canvases: Sequence[torch.Tensor], opset: int = MIN_OPSET,
                    logger: Optional[Callable[[str], None]] = None) -> Dict:
    """Export the graphs of ``model`` (a GPLQ W4A4 detector) to ``out_dir``:
    one trunk per canvas (each tensor of ``canvases`` an example batch of
    preprocessed images at that canvas size), each RoI head once, every one
    in its three forms (:func:`~.export.export_forms`), and the manifest.
    Returns the manifest (also written to :func:`manifest_path`), with
    each graph's files relative to ``out_dir``.

    Raises:
        ValueError: a float or Stage-1 model, a detector with no export
            rule (:func:`check_detector`), two canvases of the same size.
    """
    check_exportable(model)
    det = model.student
    check_detector(det)
    sizes = [tuple(c.shape[-2:]) for c in canvases]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f'canvases {sizes}: each size once')
    info = describe(det)
    # the manifest is written last: an export that stops half way leaves
    # none, never an old one naming a mix of old and new files
    if osp.exists(manifest_path(out_dir, stem)):
        os.remove(manifest_path(out_dir, stem))
    trunk = Trunk(det)
    names = trunk_outputs(info['levels'])
    graphs: Dict[str, List[Dict]] = dict(trunk=[], roi=[])
    per_channel = set()

    def add(kind, key, graph, x, outputs, axis, **extra):
        forms = export_forms(model, out_dir, f'{stem}_{key}', x, opset,
                             logger, graph=(graph, outputs), axis=axis)
        per_channel.update(forms['per_channel'])
        graphs[kind].append(dict(
            name=key, outputs=forms['outputs'],
            input_shape=list(x.shape[1:]),
            batch=None if forms['dynamic_batch'] else len(x),
            files={k: osp.basename(p) for k, p in forms['paths'].items()},
            bytes=forms['bytes'], **extra))
        return forms

    was_training = det.training
    det.eval()
    try:
        for x in canvases:
            h, w = x.shape[-2:]
            add('trunk', f'trunk_{h}x{w}', trunk, x, names, 'batch',
                canvas=[h, w])
        with torch.no_grad():
            feats = trunk(canvases[0])[:info['levels']]
        boxes = [_example_boxes(*canvases[0].shape[-2:])] * len(canvases[0])
        for key, head, extractor in roi_graphs(det):
            with torch.no_grad():
                x = roi_inputs(extractor, feats, boxes)
            forms = add('roi', key, head, x,
                        ['mask_preds'] if key.startswith('mask') else
                        ['cls_score', 'bbox_pred'], 'rois')
            if not forms['dynamic_batch']:
                raise ValueError(
                    f'{key}: the {type(head).__name__} graph does not take '
                    'a dynamic number of RoIs (its forward turns it into a '
                    'constant); no export rule for it')
    finally:
        det.train(was_training)
    manifest = dict(format=MANIFEST_FORMAT, architecture=info,
                    method=model.method, opset=opset,
                    per_channel_layers=sorted(per_channel), **graphs)
    with open(manifest_path(out_dir, stem), 'w') as f:
        json.dump(manifest, f, indent=2)
    if logger:
        logger(f'detector export: {len(graphs["trunk"])} trunk(s) at '
               f'{sizes}, RoI graphs {[g["name"] for g in graphs["roi"]]}; '
               f'manifest {manifest_path(out_dir, stem)}')
    return manifest


def find_manifest(path: str) -> str:
    """The manifest of an export: ``path`` itself (a ``*_detector.json``) or
    the one manifest in the directory ``path``."""
    if osp.isdir(path):
        found = sorted(glob.glob(osp.join(path, '*_detector.json')))
        if len(found) != 1:
            raise ValueError(
                f'{path}: expected one *_detector.json manifest from '
                f'tools/export.py, found {len(found)}'
                + (f' ({", ".join(map(osp.basename, found))}); pass one'
                   if found else ''))
        return found[0]
    if not osp.isfile(path):
        raise ValueError(f'{path}: no such export (a directory or a '
                         '*_detector.json manifest)')
    return path


def read_manifest(path: str) -> Dict:
    try:
        manifest = read_json(path)
    except ValueError as e:
        raise ValueError(f'{path}: not a JSON manifest ({e})') from None
    if manifest.get('format') != MANIFEST_FORMAT:
        raise ValueError(f'{path}: not a detector manifest of tools/export.py '
                         f'(format {manifest.get("format")!r})')
    return manifest


def host_config(architecture: dict) -> ConfigDict:
    """The host detector's config with its RoI head the runtime's subclass
    (:mod:`.det_runtime`), which runs the heads as graphs."""
    arch = dict(architecture)
    roi = dict(arch['roi_head'])
    for key, ours in ROI_HEADS.items():
        if roi.get('type') in (key.rsplit('.', 1)[1],
                               'mmdet.' + key.rsplit('.', 1)[1]):
            roi['type'] = ours
            break
    else:
        raise ValueError(f'roi_head type {roi.get("type")!r} has no export '
                         'rule')
    arch['roi_head'] = roi
    return ConfigDict(arch)  # mmdet reads its cfgs by attribute


def check_architecture(manifest: Dict, config: Dict, where: str) -> None:
    """Raise when the detector a config builds (``config``,
    :func:`~.det_export.describe`) is not the one the export's graphs were
    traced from, naming the first difference."""
    exported = manifest['architecture']
    for key, value in exported.items():
        if config.get(key) != value:
            raise ValueError(
                f'{where}: the exported graphs do not match the config: '
                f'{key} is {value} in the export, {config.get(key)} in the '
                'config')


def detector_test_config(cfg, export: str, form: str = 'runtime',
                         runtime: str = 'onnxruntime'):
    """``cfg`` (a GPLQ detector config) rewritten to evaluate the export at
    ``export`` (its directory or manifest) in ``runtime`` with
    :class:`ONNXDetector`: the
    same dataloader, preprocessor and metric; the GPLQ hooks and the
    checkpoint load go. Raises ValueError when the export does not match
    the config."""
    from mmengine.registry import MODELS, DefaultScope

    from . import det_runtime  # noqa: F401  registers the ONNX models
    model = cfg.model
    arch = model.get('architecture', model) if model.get(
        'type') == 'GPLQDetector' else model
    manifest = find_manifest(export)
    m = read_manifest(manifest)
    arch = ConfigDict(copy.deepcopy(arch))
    if 'data_preprocessor' not in arch and cfg.get('data_preprocessor'):
        arch['data_preprocessor'] = dict(cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope',
                                                      'mmdet')):
        host = MODELS.build(host_config(arch))
    check_architecture(m, describe(host), manifest)
    cfg.model = dict(type='ONNXDetector', manifest=manifest,
                     architecture=arch, form=form, runtime=runtime)
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks') or []
                        if not str(h.get('type', '')).startswith('GPLQ')]
    cfg.load_from = None
    cfg.model_wrapper_cfg = dict(type='ONNXEvalWrapper')  # used under DDP
    return cfg


def graph_inputs(model: nn.Module, manifest: Dict, batches) -> Dict:
    """Each graph's inputs as PyTorch computes them on ``batches``
    (preprocessed images at the first canvas): the images for the trunk;
    for each RoI graph, the RoI features of the RPN's proposals (mmdet's
    decoding and NMS). ``{graph name: [tensors]}``."""
    det = model.student
    levels = manifest['architecture']['levels']
    trunk = Trunk(det)
    name = manifest['trunk'][0]['name']
    out = {g['name']: [] for g in [manifest['trunk'][0]] + manifest['roi']}
    with torch.no_grad():
        for x in batches:
            out[name].append(x)
            y = trunk(x)
            metas = [dict(img_shape=tuple(x.shape[-2:]))] * len(x)
            proposals = det.rpn_head.predict_by_feat(
                list(y[levels:2 * levels]), list(y[2 * levels:]),
                batch_img_metas=metas, rescale=False)
            boxes = [p.bboxes for p in proposals]
            for key, _, extractor in roi_graphs(det):
                out[key].append(roi_inputs(extractor, y[:levels], boxes))
    return out

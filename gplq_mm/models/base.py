"""The base of the GPLQ wrapper models: a converted student, a frozen FP
teacher, the stages, and the steps :class:`~gplq_mm.engine.GPLQHook` runs
outside the gradient steps."""
import contextlib
import os.path as osp
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.dist import all_gather_object, all_reduce
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.runner import load_checkpoint

from ..quant import (
    QuantConfig,
    calibration,
    convert,
    fit_qwt,
    fold_act_steps,
    quantize_weights,
    qwt_blocks,
    set_quant_state,
)
from ..quant.hosts import ln_linear_pairs, model_task
from ..quant.repq import reparameterize
from ..utils.checkpoint import (
    check_checkpoint_file,
    mmengine_checkpoint_globals,
)
from .compile import CompiledRegions
from .methods import checkpoint_name, get_method
from .signature import signature

__all__ = ['GPLQModel']

STAGES = {0: 'float', 1: 'Stage 1 (activations quantized)',
          2: 'Stage 2 (weights quantized too)'}


class GPLQModel(BaseModel):
    """Base of the GPLQ wrappers.

    Args:
        architecture (dict): Config of the host model (the student).
        checkpoint (str, optional): Pretrained FP32 checkpoint of
            ``architecture`` (path or URL). Required for training: it
            initializes the student and the teacher. Not needed to test a
            GPLQ checkpoint. Defaults to None.
        quant_cfg (dict, optional): :class:`~gplq_mm.quant.QuantConfig`
            fields over the method's defaults. Defaults to None
            (``include=('backbone',)``).
        method (str): ``'gplq'`` or a baseline: ``'gplq-no-qwt'``,
            ``'qat-w4a4'`` (1-epoch QAT, weights and activations together),
            ``'minmax-ptq'``, ``'repq-ptq'`` (RepQ-ViT-style PTQ). Defaults to
            ``'gplq'``.
        use_qwt (bool): Apply fitted QwT compensators. Defaults to True.
        compile_cfg (bool | dict): ``torch.compile`` the student's and the
            teacher's backbones in training and evaluation (calibration and
            Stage 2 run eagerly): True, or a dict of ``torch.compile``
            arguments (e.g. ``dict(mode='max-autotune')``). A failure, in
            forward or in the backward probed on the first training step,
            logs one warning and the model runs eagerly from then on. Input
            sizes that change from batch to batch (detection) recompile.
            Defaults to False.
        internal_fp32 (bool): Run the latent (trained) weights with every
            quantizer and QwT compensator off, whatever the stage: the
            paper's "internal FP32" (Table 5), e.g. ``tools/test.py CONFIG
            CKPT --cfg-options model.internal_fp32=True``. Where a method
            changed the latent weights without changing the float function
            (``gplq-deploy``'s folded channel scales, ``repq-ptq``'s
            reparameterized LayerNorms), these are the weights it evaluates.
            For evaluation only: :class:`~gplq_mm.engine.GPLQHook` refuses
            to train with it. Defaults to False.
        data_preprocessor (dict, optional): Given to the host model when its
            config has none. Defaults to None.
        init_cfg (dict, optional): Unused by GPLQ; kept for mmengine.

    The persisted buffer ``gplq_stage`` (0 float, 1 W32A4, 2 W4A4) decides
    which quantizers are on, so a loaded checkpoint runs as it was saved
    (unless ``internal_fp32``).
    """

    def __init__(self,
                 architecture: dict,
                 checkpoint: Optional[str] = None,
                 quant_cfg: Optional[dict] = None,
                 method: str = 'gplq',
                 use_qwt: bool = True,
                 compile_cfg: Union[bool, dict] = False,
                 internal_fp32: bool = False,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(architecture, dict):
            raise TypeError('architecture must be the host model config (a '
                            f'dict), got {type(architecture).__name__}')
        architecture = dict(architecture)
        if data_preprocessor is not None:
            # The Runner hands the config's top-level data_preprocessor to
            # the outermost model; it belongs to the host.
            architecture.setdefault('data_preprocessor', data_preprocessor)
        self.student = MODELS.build(architecture)
        self._check_architecture(self.student)
        teacher = MODELS.build(architecture)
        teacher.eval().requires_grad_(False)
        # Not a submodule: never saved, never optimized, never DDP-synced.
        object.__setattr__(self, '_teacher', teacher)
        self.data_preprocessor = self.student.data_preprocessor
        self.checkpoint = checkpoint
        self.method = method
        self.recipe = get_method(method, type(self).__name__)
        self.quant_cfg = QuantConfig.from_any({
            'include': ('backbone', ),
            **self.recipe.quant,
            **dict(quant_cfg or {})
        })
        convert(self.student, self.quant_cfg)
        self.use_qwt = use_qwt
        if not isinstance(internal_fp32, bool):
            raise ValueError(f'model.internal_fp32={internal_fp32!r}: use '
                             'True or False')
        self.internal_fp32 = internal_fp32
        self.set_compile_cfg(compile_cfg)
        self.register_buffer('gplq_stage', torch.zeros((), dtype=torch.long))
        self.register_load_state_dict_post_hook(
            lambda mod, keys: mod.apply_stage())
        self.apply_stage()

    # -- host checks and loss, to be specialized ----------------------------
    task: str = ''  # the host task this wrapper takes (quant.hosts.models)

    def _check_architecture(self, model: nn.Module) -> None:
        if model_task(model) != self.task:
            raise TypeError(
                f'{type(self).__name__}.architecture must build a {self.task}'
                f' (one registered in gplq_mm.quant.hosts); it built '
                f'{type(model).__name__}')

    def loss(self, inputs: torch.Tensor, data_samples) -> Dict:
        raise NotImplementedError

    def deploy_graph(self) -> Tuple[nn.Module, Union[str, List[str]]]:
        """What :func:`gplq_mm.deploy.export_onnx` exports: a module taking
        the preprocessed image batch, and the names of its outputs (one
        name is numbered when it returns several)."""
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, data_samples=None,
                mode: str = 'tensor'):
        """``loss``: the GPLQ loss (a non-finite one raises, before any
        update); ``predict`` / ``tensor``: the host's."""
        with self.compiled():
            if mode != 'loss':
                return self.student(inputs, data_samples, mode=mode)
            losses = self.loss(inputs, data_samples)
        # as mmengine's parse_losses: list values (mmdet's per-level RPN
        # losses) count element by element
        total = sum(t.sum() for k, v in losses.items() if 'loss' in k
                    for t in (v if isinstance(v, (list, tuple)) else [v]))
        # every rank learns whether any rank's loss is non-finite, so all
        # raise together (one rank alone would leave the others waiting in
        # the next collective until the timeout); no-op in one process
        finite = torch.isfinite(total.detach()).float()
        agreed = finite.clone()
        all_reduce(agreed, op='min')
        if not bool(agreed):
            # on every rank: its forward issues the same collectives (SyncBN)
            where = self.first_non_finite(
                dict(inputs=inputs, data_samples=data_samples))
            mine = None if bool(finite) else (float(total.detach()), where)
            raise FloatingPointError(self._non_finite_message(
                all_gather_object(mine)))
        return losses

    @staticmethod
    def _non_finite_message(reports: List) -> str:
        """The one message every rank raises, from each rank's ``(loss,
        first non-finite layer)`` (None where its loss is finite)."""
        bad = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
        rank, (value, where) = bad[0]
        ranks = '' if len(reports) == 1 else (
            f' on rank {rank}' if len(bad) == 1 else
            f' on ranks {[r for r, _ in bad]} (the first shown)')
        it = MessageHub.get_current_instance().get_info('iter')
        return (f'GPLQ: the Stage-1 loss is {value}{ranks}'
                + ('' if it is None else f' at iteration {it + 1}') + '; '
                + (f'the first non-finite output is {where}\'s'
                   if where else 'every layer output is finite (the loss '
                   'itself is not)')
                + '. Nothing was updated; the last checkpoint written is the '
                'last good one.')

    def set_compile_cfg(self, compile_cfg: Union[bool, dict, None]
                        ) -> Optional[CompiledRegions]:
        """Compile the backbones from now on (``compile_cfg`` as in the
        constructor; False / None: eager). Returns the compiler, whose
        ``failed`` says whether it fell back to eager."""
        self._compiler = CompiledRegions(compile_cfg) if compile_cfg else \
            None
        return self._compiler

    @property
    def compiler(self) -> Optional[CompiledRegions]:
        return self._compiler

    def compiled(self):
        """Context in which the backbones run compiled (``compile_cfg``)."""
        if self._compiler is None:
            return contextlib.nullcontext()
        return self._compiler.active({
            'student.backbone': self.student.backbone,
            'teacher.backbone': self.teacher.backbone})

    # -- teacher / device ---------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        # The teacher is deliberately not a submodule (never saved,
        # optimized or DDP-synced); nn.Module has no public seam through
        # which .to() / .cuda() / .half() reach such a module, so they reach
        # it here, the one place.
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    # -- stages -------------------------------------------------------------
    @property
    def stage(self) -> int:
        return int(self.gplq_stage)

    def set_stage(self, stage: int) -> None:
        if stage not in STAGES:
            raise ValueError(f'stage={stage!r}: use one of {list(STAGES)}')
        self.gplq_stage.fill_(stage)
        self.apply_stage()

    def apply_stage(self) -> None:
        """Switch the student's quantizers and compensators to what the
        stage runs (:func:`~gplq_mm.quant.set_quant_state`); all off when
        ``internal_fp32``."""
        if self.internal_fp32:
            set_quant_state(self.student, weight=False, act=False, qwt=False)
            return
        stage = self.stage
        weight = stage >= 2 or (stage == 1
                                and self.recipe.weights_in_stage1)
        set_quant_state(self.student, weight=weight, act=stage >= 1,
                        qwt=self.use_qwt)

    @torch.no_grad()
    def first_non_finite(self, data: dict) -> Optional[str]:
        """The first student module (in forward order) whose output has a
        NaN or Inf on the preprocessed ``data``, or None."""
        found = []

        def hook(name):
            def fn(mod, args, out):
                t = out[0] if isinstance(out, (tuple, list)) else out
                if not found and isinstance(t, torch.Tensor) and \
                        t.is_floating_point() and not torch.isfinite(t).all():
                    found.append(name)
            return fn

        handles = [m.register_forward_hook(hook(n))
                   for n, m in self.student.named_modules() if n]
        try:
            self.forward_all_sites(data)
        finally:
            for h in handles:
                h.remove()
        return found[0] if found else None

    # -- what a checkpoint must agree on -----------------------------------
    def signature(self) -> dict:
        """What a GPLQ checkpoint's quantizer state means: the method and
        the quantizer layout (bit widths, granularities, softmax grid).
        Saved in checkpoints' meta by GPLQHook; checked on load
        (:func:`~gplq_mm.models.signature.check_checkpoint`)."""
        return signature(self.method, self.quant_cfg)

    def checkpoint_name(self) -> str:
        """The final checkpoint's file name, e.g. ``gplq_w4a4.pth``."""
        return checkpoint_name(self.method, self.quant_cfg.w_bits,
                               self.quant_cfg.a_bits)

    # -- weights ------------------------------------------------------------
    def init_weights(self) -> None:
        """Load the FP32 checkpoint into the teacher and the student.

        The host's own initialization (random, or an ImageNet-pretrained
        backbone to download) is skipped: the strict load sets every
        parameter and buffer."""
        if self.checkpoint is None:
            raise ValueError(
                f'{type(self).__name__}.checkpoint is not set: GPLQ starts '
                'from a pretrained FP32 model (the teacher and the '
                "student's initialization); set model.checkpoint to its "
                'path or URL')
        if '://' not in self.checkpoint and not osp.isfile(self.checkpoint):
            raise FileNotFoundError(
                f'{type(self).__name__}.checkpoint={self.checkpoint!r} does '
                'not exist')
        check_checkpoint_file(self.checkpoint,
                              f'{type(self).__name__}.checkpoint')
        for name, model in (('student', self.student),
                            ('teacher', self.teacher)):
            try:
                with mmengine_checkpoint_globals():
                    load_checkpoint(model, self.checkpoint,
                                    map_location='cpu', strict=True,
                                    revise_keys=[(r'^module\.', '')])
            except RuntimeError as e:
                raise ValueError(
                    f'checkpoint {self.checkpoint!r} does not match '
                    f'model.architecture ({name}): {e}') from None
        self.apply_stage()

    # -- the method's steps (called by GPLQHook) ----------------------------
    # ``batches`` are preprocessed data dicts (``inputs``, ``data_samples``).
    @property
    def trains(self) -> bool:
        """Whether the method trains (QAT); PTQ methods skip the loop."""
        return self.recipe.trains

    def check_data(self, data: dict) -> None:
        """Raise before training if ``data`` cannot train this model: its
        images must have the channels the backbone's first conv takes."""
        first = next((m for m in self.student.backbone.modules()
                      if isinstance(m, nn.Conv2d)), None)
        got = data['inputs'].shape[1]
        if first is not None and got != first.in_channels:
            raise ValueError(
                f'the training images have {got} channels but the model '
                f'takes {first.in_channels}: check the pipeline (color '
                'type) and data_preprocessor')

    @property
    def needs_prepare(self) -> bool:
        """Whether :meth:`prepare` must run before training (statistics
        the loss needs and a loaded checkpoint does not already hold)."""
        return False

    def prepare(self, batches: Iterable[dict]) -> dict:
        """Fit what the training loss needs from ``batches``; returns
        statistics for ``gplq_stats.json``."""
        return {}

    def forward_all_sites(self, data: dict) -> None:
        """A forward that reaches every quantizer in scope."""
        self.student.extract_feat(data['inputs'])

    @torch.no_grad()
    def calibrate(self, batches: Iterable[dict]) -> int:
        """Initialize activation steps from ``batches``; enter Stage 1.

        RepQ first reparameterizes post-LayerNorm activations on the same
        batches; direct QAT also initializes the weight steps."""
        was_training = self.student.training
        self.student.eval()
        batches = list(batches)
        if self.recipe.reparam:
            pairs = [p for _, b in qwt_blocks(self.student, self.quant_cfg)
                     for p in ln_linear_pairs(b)]
            reparameterize(pairs, lambda: [self.forward_all_sites(d)
                                           for d in batches])
        with calibration(self.student, 'act') as qs:
            for data in batches:
                self.forward_all_sites(data)
        if self.recipe.weights_in_stage1:
            quantize_weights(self.student, self.recipe.clip)
        self.student.train(was_training)
        self.set_stage(1)
        return len(qs)

    @torch.no_grad()
    def weight_ptq(self, batches: List[dict], qwt: bool = True,
                   ridge: float = 1e-4, qwt_target: str = 'same_input',
                   logger: Optional[Callable[[str], None]] = None) -> dict:
        """Stage 2: per-channel weight steps by L2 clipping search, then QwT
        block by block on ``batches`` (``qwt_target``: see
        :func:`~gplq_mm.quant.fit_qwt`). Enters Stage 2."""
        if self.stage < 1:
            raise RuntimeError('weight PTQ needs a Stage-1 model (activation '
                               'quantizers calibrated)')
        was_training = self.student.training
        self.student.eval()
        if self.quant_cfg.deployable:
            n = fold_act_steps(self.student)
            if logger:
                logger(f'deployable: {n} per-channel input steps folded into '
                       'their producers (one step per tensor now)')
        if not self.recipe.weights_in_stage1:  # QAT learned its steps
            n = quantize_weights(self.student, self.recipe.clip)
            if logger:
                logger(f'weight PTQ: {n} layers quantized per output channel '
                       f'at {self.quant_cfg.w_bits} bits')
        self.set_stage(2)
        r2 = {}
        blocks = qwt_blocks(self.student, self.quant_cfg)
        if qwt and self.recipe.qwt and blocks:
            r2 = fit_qwt(
                self.student, blocks, batches,
                forward=lambda d: self.student.extract_feat(d['inputs']),
                ridge=ridge, target=qwt_target, logger=logger)
        self.student.train(was_training)
        self.apply_stage()
        return r2

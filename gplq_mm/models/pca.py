"""PCA feature-mimicking loss (L_PCA), tensor in, tensor out."""
import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ['choose_num_components', 'pca_loss', 'PCAProjector']


def choose_num_components(explained: torch.Tensor, threshold: float = 0.6,
                          multiple: int = 32) -> int:
    """Smallest multiple of ``multiple`` whose leading components explain at
    least ``threshold`` of the variance (capped at the feature dim).

    Examples:
        >>> ev = torch.full((768,), 1 / 768.)   # flat spectrum
        >>> choose_num_components(ev, 0.6, 32)  # 0.6 * 768 = 460.8 -> 480
        480
    """
    dim = explained.numel()
    cum = explained.double().cumsum(0)
    for k in range(multiple, dim + multiple, multiple):
        if cum[min(k, dim) - 1] >= threshold - 1e-12:
            return min(k, dim)
    return dim


def pca_loss(f_s: torch.Tensor, f_t: torch.Tensor, mean: torch.Tensor,
             components: torch.Tensor) -> torch.Tensor:
    """``mean_b || (f_s - mu) V - (f_t - mu) V ||^2``, computed as
    ``|| (f_s - f_t) V ||^2`` (the mean cancels) in float32: under autocast
    the two projections would be low-precision matmuls whose nearly equal
    results cancel.

    Args:
        f_s, f_t: (B, D) student / teacher penultimate features.
        mean: (D,) teacher feature mean (cancels; kept for the signature).
        components: (D, k) kept directions V (no whitening).
    """
    with torch.autocast(f_s.device.type, enabled=False):
        diff = (f_s.float() - f_t.float()) @ components.float()  # (B, k)
    return diff.pow(2).sum(dim=1).mean()


class PCAProjector(nn.Module):
    """Holds the PCA of the teacher's penultimate features; all of it in the
    state_dict, allocated at full size: ``mean`` (D), ``components`` (D, D),
    columns sorted by variance, ``explained`` (D) ratios, ``num_components``
    (k) and ``fitted``. Python copies of the last two (:attr:`is_fitted`,
    :attr:`kept`), refreshed by :meth:`fit` and by a state-dict load, keep
    the training step from reading them off the device every iteration."""

    def __init__(self, dim: int, threshold: float = 0.6, multiple: int = 32):
        super().__init__()
        self.dim, self.threshold, self.multiple = dim, threshold, multiple
        self.register_buffer('mean', torch.zeros(dim))
        self.register_buffer('components', torch.zeros(dim, dim))
        self.register_buffer('explained', torch.zeros(dim))
        self.register_buffer('num_components',
                             torch.zeros((), dtype=torch.long))
        self.register_buffer('fitted', torch.zeros((), dtype=torch.bool))
        self.reset_stats()
        self._refresh()
        self.register_load_state_dict_post_hook(lambda mod, _: mod._refresh())

    def _refresh(self) -> None:
        self._k, self._fitted = int(self.num_components), bool(self.fitted)

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def reset_stats(self):
        self._s1 = self._s2 = None
        self._n = 0

    @torch.no_grad()
    def update(self, feats: torch.Tensor) -> None:
        f = feats.detach().double().reshape(-1, feats.shape[-1])
        if f.shape[1] != self.dim:
            raise ValueError(f'PCA expects {self.dim}-d features, got '
                             f'{f.shape[1]}-d')
        s1, s2 = f.sum(0), f.T @ f
        self._s1 = s1 if self._s1 is None else self._s1 + s1
        self._s2 = s2 if self._s2 is None else self._s2 + s2
        self._n += f.shape[0]

    @torch.no_grad()
    def fit(self) -> int:
        """Fit from the accumulated statistics (summed over ranks); returns
        the kept dimension."""
        n = torch.tensor(float(self._n), dtype=torch.float64,
                         device=self._s1.device)
        s1, s2 = self._s1, self._s2
        if dist.is_available() and dist.is_initialized():
            for t in (n, s1, s2):
                dist.all_reduce(t)
        mean = s1 / n
        cov = s2 / n - torch.outer(mean, mean)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
        explained = evals / evals.sum().clamp(min=1e-12)
        k = choose_num_components(explained, self.threshold, self.multiple)
        self.mean.copy_(mean.float())
        self.components.copy_(evecs.float())
        self.explained.copy_(explained.float())
        self.num_components.fill_(k)
        self.fitted.fill_(True)
        self.reset_stats()
        self._refresh()
        return k

    @property
    def kept(self) -> torch.Tensor:
        return self.components[:, :self._k]

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        return pca_loss(f_s, f_t, self.mean, self.kept)

r"""Lazy affine transformations of :math:`\mathbb{R}^D`, the standardisation layer of the flow
guides: element-wise, or lower triangular."""

from __future__ import annotations

__all__ = ["ElementwiseAffine", "TrilAffine"]

import torch
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.transforms import Transform
from zuko.lazy import LazyTransform


class _VectorAffine(Transform):
    r"""An increasing affine bijection of :math:`\mathbb{R}^D` over the last dimension; unlike
    :class:`~torch.distributions.transforms.AffineTransform`, its event shape is that of
    :math:`x`, whatever the batch shape of its parameters."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1


class _ShiftScale(_VectorAffine):
    r"""The transformation :math:`y = \mu + \exp(\ell) \odot x`."""

    def __init__(self, loc: Tensor, log_scale: Tensor):
        super().__init__()
        self.loc, self.log_scale = loc, log_scale

    def _call(self, x: Tensor) -> Tensor:
        return self.loc + self.log_scale.exp() * x

    def _inverse(self, y: Tensor) -> Tensor:
        return (y - self.loc) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        ladj = self.log_scale.sum(-1)
        return ladj.expand(torch.broadcast_shapes(ladj.shape, x.shape[:-1]))


class ElementwiseAffine(LazyTransform):
    r"""Creates a lazy element-wise affine transformation :math:`y = \mu + \sigma \odot x`.

    Without context, :math:`\mu` and :math:`\log \sigma` are parameters; with context
    :math:`c`, they are a linear function of it, :math:`(\mu, \log \sigma) = W c + b`, with
    :math:`W = 0` at initialisation, so that the transformation starts at the same
    :math:`(\mu, \sigma)` for every context.

    Arguments:
        features: The number of features :math:`D`.
        context: The number of context features.
        loc: The initial shift :math:`\mu`, shaped :math:`(D,)` (default zero).
        scale: The initial scale :math:`\sigma`, a positive float or a tensor :math:`(D,)`.
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        loc: Tensor | None = None,
        scale: float | Tensor = 1.0,
    ) -> None:
        super().__init__()
        loc = torch.zeros(features) if loc is None else torch.as_tensor(loc).reshape(features)
        log_scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).log()
        log_scale = log_scale.expand(features)
        if context > 0:
            self.hyper = nn.Linear(context, 2 * features)
            with torch.no_grad():
                self.hyper.weight.zero_()
                self.hyper.bias.copy_(torch.cat((loc, log_scale)))
        else:
            self.loc = nn.Parameter(loc.clone())
            self.log_scale = nn.Parameter(log_scale.clone())

    def forward(self, c: Tensor | None = None) -> Transform:
        if hasattr(self, "hyper"):
            loc, log_scale = self.hyper(c).chunk(2, dim=-1)
        else:
            loc, log_scale = self.loc, self.log_scale
        return _ShiftScale(loc, log_scale)


class _TrilShiftScale(_VectorAffine):
    r"""The transformation :math:`y = \mu + L x`, with :math:`L` lower triangular with a
    positive diagonal; :math:`\log |\det L| = \sum_i \log L_{ii}`."""

    def __init__(self, loc: Tensor, scale_tril: Tensor):
        super().__init__()
        self.loc, self.scale_tril = loc, scale_tril

    def _call(self, x: Tensor) -> Tensor:
        return self.loc + (self.scale_tril @ x.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        r = (y - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(*r.shape[:-2], *self.scale_tril.shape[-2:])
        return torch.linalg.solve_triangular(tril, r, upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        ladj = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return ladj.expand(torch.broadcast_shapes(ladj.shape, x.shape[:-1]))


class TrilAffine(LazyTransform):
    r"""Creates a lazy affine transformation :math:`y = \mu + L x`, with :math:`L` lower
    triangular: :math:`L = \mathrm{diag}(\sigma) + \mathrm{tril}(M, -1)`, parameters
    :math:`\mu`, :math:`\log \sigma` and the strictly lower part :math:`M` (zero at
    initialisation, so that the transformation starts at :math:`\mu + \sigma \odot x`).

    Applied to standard-normal noise it is the Cholesky parametrisation of
    :math:`\mathcal{N}(\mu, L L^\top)`, every Gaussian over :math:`\mathbb{R}^D`, as Pyro's
    :class:`~pyro.infer.autoguide.AutoMultivariateNormal`. Without context only.

    Arguments:
        features: The number of features :math:`D`.
        loc: The initial shift :math:`\mu`, shaped :math:`(D,)` (default zero).
        scale: The initial diagonal :math:`\sigma`, a positive float or a tensor :math:`(D,)`.
    """

    def __init__(self, features: int, loc: Tensor | None = None, scale: float | Tensor = 1.0):
        super().__init__()
        loc = torch.zeros(features) if loc is None else torch.as_tensor(loc).reshape(features)
        log_scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).log()
        log_scale = log_scale.expand(features)
        self.loc = nn.Parameter(loc.clone())
        self.log_scale = nn.Parameter(log_scale.clone())
        self.lower = nn.Parameter(torch.zeros(features, features, dtype=loc.dtype))

    def forward(self, c: Tensor | None = None) -> Transform:
        if c is not None:
            raise ValueError("TrilAffine takes no context")
        tril = self.lower.tril(-1) + torch.diag_embed(self.log_scale.exp())
        return _TrilShiftScale(self.loc, tril)

r"""The Bernoulli GLM task of the simulation-based inference benchmark: a logistic regression
of a spike train on a stimulus, observed through its sufficient statistics."""

from __future__ import annotations

__all__ = ["BernoulliGLM", "BernoulliGLMLikelihood", "smoothness_precision"]

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints

from .sbibm import SbibmTask, read_sbibm


def smoothness_precision(num_filter: int = 9, offset_precision: float = 0.5) -> Tensor:
    r"""The precision matrix of the Bernoulli GLM's prior: :math:`\mathrm{diag}(b, F^\top F)`
    for the offset and the :math:`M` filter weights, where :math:`F = D^2 + \mathrm{diag}(
    \sqrt{j / M})_{j=0}^{M-1}` and :math:`D = I - (\text{ones below the diagonal})` takes first
    differences: the prior penalises the filter's second differences (smoothness), and its
    size more with the lag.

    Arguments:
        num_filter: :math:`M`.
        offset_precision: :math:`b`, the offset's precision.

    Returns:
        The precision, shaped ``[M + 1, M + 1]``, in float64.
    """
    difference = torch.eye(num_filter, dtype=torch.float64) - torch.diag(
        torch.ones(num_filter - 1, dtype=torch.float64), -1
    )
    lags = torch.arange(num_filter, dtype=torch.float64) / num_filter
    f = difference @ difference + torch.diag(lags.sqrt())
    precision = torch.zeros(num_filter + 1, num_filter + 1, dtype=torch.float64)
    precision[0, 0] = offset_precision
    precision[1:, 1:] = f.T @ f
    return precision


class BernoulliGLMLikelihood(TorchDistribution):
    r"""The sufficient statistics :math:`s = X^\top y` of Bernoulli draws :math:`y_i \sim
    \mathrm{Bernoulli}(\sigma(x_i^\top \theta))`, :math:`i = 1, \dots, n`.

    Since :math:`\log p(y \mid \theta) = \theta^\top X^\top y - \sum_i \log(1 + e^{x_i^\top
    \theta})`, the statistics are sufficient for :math:`\theta`, and for a design matrix in
    general position (real-valued entries) distinct spike trains give distinct statistics, so
    the probability of :math:`s` is that of its spike train:

    .. math:: \log p(s \mid \theta) = \theta^\top s - \sum_{i=1}^n \log(1 + e^{x_i^\top
        \theta}).

    Arguments:
        theta: The weights, shaped ``[*batch, p]``.
        design: The design matrix :math:`X`, shaped ``[n, p]``.

    Example:
        >>> import torch
        >>> likelihood = BernoulliGLMLikelihood(torch.zeros(3, 2), torch.randn(50, 2))
        >>> likelihood.sample((4,)).shape, likelihood.log_prob(likelihood.sample()).shape
        (torch.Size([4, 3, 2]), torch.Size([3]))
    """

    arg_constraints = {"theta": constraints.real_vector}  # noqa: RUF012 - torch API
    support = constraints.real_vector

    def __init__(self, theta: Tensor, design: Tensor, validate_args: bool | None = None):
        if design.dim() != 2 or theta.shape[-1:] != design.shape[-1:]:
            raise ValueError(
                f"theta [*batch, p] and design [n, p] disagree: {list(theta.shape)}, "
                f"{list(design.shape)}"
            )
        self.theta, self.design = theta, design.to(theta)
        super().__init__(theta.shape[:-1], theta.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> BernoulliGLMLikelihood:
        new = self._get_checked_instance(BernoulliGLMLikelihood, _instance)
        batch_shape = torch.Size(batch_shape)
        new.theta = self.theta.expand((*batch_shape, *self.event_shape))
        new.design = self.design
        super(BernoulliGLMLikelihood, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=()) -> Tensor:
        with torch.no_grad():
            probs = torch.sigmoid(self.theta @ self.design.T)
            spikes = torch.bernoulli(probs.expand((*sample_shape, *probs.shape)))
            return spikes @ self.design

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits = self.theta @ self.design.T
        return (self.theta * value).sum(-1) - torch.nn.functional.softplus(logits).sum(-1)


class BernoulliGLM(SbibmTask):
    r"""The Bernoulli GLM task of the simulation-based inference benchmark, as a Pyro model.

    A neuron spikes in bin :math:`i = 1, \dots, 100` with probability :math:`\sigma(x_i^\top
    \theta)`, where :math:`x_i = (1, I_i, I_{i-1}, \dots, I_{i-8})` holds an offset and the
    last 9 values of a white-noise stimulus :math:`I` (zero before the first bin): the design
    matrix :math:`X` is sbibm's, read from its ``design_matrix.pt``. The prior is Gaussian with
    the smoothness precision of :func:`smoothness_precision`, :math:`\theta \sim \mathcal{N}(0,
    B^{-1})`, and the observation is sbibm's 10 summary statistics, the number of spikes and
    the spike-triggered sums of the stimulus at lags 0 to 8, which are :math:`s = X^\top y`:
    sufficient for :math:`\theta` (see :class:`BernoulliGLMLikelihood`), so that the posterior
    given :math:`s` is the posterior given the spike train (sbibm's ``observation.csv`` holds
    :math:`s`, ``observation_raw.csv`` the spike train :math:`y`). :meth:`reference_samples`
    gives sbibm's reference draws (Pólya-Gamma Gibbs sampling on the spike train).

    The latent site is ``"theta"`` ``[10]``, the observed site ``"x"`` ``[10]``. The design
    matrix needs sbibm even for an observation tensor.

    Arguments:
        observation: sbibm's observation number, 1 to 10 (its :attr:`truth` and reference
            draws come with it), or 10 statistics.

    Raises:
        ImportError: If sbibm is not installed.

    Example:
        >>> from condgen.evaluate import BernoulliGLM
        >>> task = BernoulliGLM(observation=3)  # doctest: +SKIP
        >>> task.data["x"].shape  # doctest: +SKIP
        torch.Size([10])

    References:
        | Flexible statistical inference for mechanistic models of neural dynamics
        | (Lueckmann et al., 2017)
        | https://arxiv.org/abs/1711.01861

        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    name = sbibm_name = "bernoulli_glm"
    description = (
        "logistic GLM of 100 spikes on a stimulus, smoothness prior on its 10 weights, observed "
        "through sufficient statistics: the SBI benchmark's Bernoulli GLM (sbibm's files)"
    )
    exact = False

    def __init__(self, observation: int | Tensor | Sequence[float] = 1):
        self.design = read_sbibm(self.sbibm_name, "design_matrix.pt").to(torch.get_default_dtype())
        self.precision = smoothness_precision().to(torch.get_default_dtype())
        self._observe(observation, (self.design.shape[1],))

    def model(self) -> None:
        prior = dist.MultivariateNormal(
            torch.zeros(len(self.precision)), precision_matrix=self.precision
        )
        theta = pyro.sample("theta", prior)
        pyro.sample("x", self.likelihood(theta))

    def likelihood(self, theta: Tensor) -> Distribution:
        r"""The distribution of the statistics given ``theta`` ``[*batch, 10]``."""
        return BernoulliGLMLikelihood(theta, self.design)

r"""Amortized posterior estimators trained on a Pyro model's simulations: the shared base."""

from __future__ import annotations

__all__ = ["PosteriorEstimator"]

import abc
import copy
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn
from torch.distributions import Transform, biject_to
from tqdm import tqdm

from .._format import check_plain, read, write
from .._optim import adamw
from .._random import seeded
from ..problem import Problem, Site

_SIMULATION_BATCH = 10_000
_VALIDATION_SEED = 0


def _observation_tensor(value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value)
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    return value


class PosteriorEstimator(nn.Module, abc.ABC):
    r"""An amortized posterior :math:`q_\phi(\theta \mid x)` of a Pyro model, trained on the
    model's own simulations.

    The model is simulated from its prior predictive, :math:`(\theta_i, x_i) \sim p(\theta)
    p(x \mid \theta)`, in one vectorised pass (the particle plate of :class:`~condgen.Problem`),
    where :math:`x` are the sites named by ``observed`` and :math:`\theta` all other (latent)
    sites. A conditional density estimator is trained on the simulations; since they cover the
    prior predictive, it learns the posterior of every observation at once, and conditioning on
    a new :math:`x_o` needs no retraining.

    The estimator works in a standardised unconstrained space. Each latent site is mapped to
    :math:`\mathbb{R}^k` by :math:`z = T^{-1}(\theta)`, :math:`T` = ``biject_to(site.support)``
    (as Pyro's autoguides do), the sites are flattened and concatenated, and
    :math:`u = (z - m_z) / s_z` is z-scored with the mean and standard deviation of the
    simulations (buffers). The observations are flattened and z-scored likewise,
    :math:`c = e((x - m_x) / s_x)` with an optional embedding network :math:`e` trained jointly.
    The density of a constrained value is then, by the change of variables,

    .. math:: \log q(\theta \mid x) = \log q_\phi(u \mid c) - \sum_j \log s_{z,j}
        - \log \left| \det \frac{\partial T(z)}{\partial z} \right|.

    Subclasses hold the network of :math:`q_\phi(u \mid c)` and implement four hooks on the
    standardised space: :meth:`_loss` (the training loss of a minibatch), :meth:`_sample`,
    :meth:`_log_prob` and :meth:`_network_config` (with :meth:`_network_options`, its inverse,
    for :meth:`load`). Everything else is here: site discovery, transforms, standardisation,
    embedding, :meth:`simulate`, :meth:`fit`, :meth:`sample`, :meth:`log_prob`, :meth:`save`
    and :meth:`load`.

    Arguments:
        model: A Pyro model. Its observed sites are drawn too: the model runs under
            :func:`pyro.poutine.uncondition`.
        observed: The names of the sites to condition on (the simulator's outputs); sites the
            model observes itself (``obs=`` given) are added. By default, only those.
        embedding: An optional network applied to the standardised observations, trained
            jointly. It receives the observation shaped ``[batch, *site.shape]`` when one site
            is observed, else the flattened concatenation ``[batch, D]``, and returns
            ``[batch, C]``.
        args: Positional arguments of the model.
        kwargs: Keyword arguments of the model.

    Attributes:
        observed: The observed site names, in order.
        latent_sites: The latent :class:`~condgen.Site` objects, by name.
        observed_sites: The observed :class:`~condgen.Site` objects, by name.
        training_losses: The mean training loss of each epoch of :meth:`fit`.
        validation_losses: The validation loss after each epoch of :meth:`fit`.

    Raises:
        ValueError: If ``observed`` names a site the model does not have, leaves no latent
            site, the model observes nothing, a latent site is discrete, or the model cannot
            be vectorised.
    """

    label: ClassVar[str] = "estimator"
    r"""The estimator's short name, in messages and in its file format."""
    fit_defaults: ClassVar[dict[str, Any]] = {
        "max_epochs": 1000,
        "batch_size": 100,
        "lr": 1e-3,
        "patience": 20,
        "lr_decay": 0.5,
        "ema": 0.99,
        "clip": 5.0,
    }
    r"""The defaults of the training options of :meth:`fit` that are None there."""
    version: ClassVar[int] = 1

    def __init__(
        self,
        model: Callable,
        observed: Sequence[str] | str | None = None,
        *,
        embedding: nn.Module | None = None,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.model = model
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        self.observed = _observed_names(model, observed, self.args, self.kwargs, self.label)
        self._problem = Problem(poutine.uncondition(model), args=self.args, kwargs=self.kwargs)
        sites = self._problem.latent_sites
        self.observed_sites: dict[str, Site] = {n: sites[n] for n in self.observed}
        self.latent_sites: dict[str, Site] = {
            n: s for n, s in sites.items() if n not in self.observed
        }
        if not self.latent_sites:
            raise ValueError(
                f"observed={list(self.observed)} leaves no latent site to infer; the model's "
                f"sites are {list(sites)}"
            )
        for name, site in self.latent_sites.items():
            if site.discrete:
                raise ValueError(
                    f"{self.label} needs continuous latent sites, but site '{name}' has discrete "
                    f"support {site.support}; marginalise it out, or use method='importance'"
                )
        self._transforms: dict[str, Transform] = {}
        self._unconstrained_shapes: dict[str, torch.Size] = {}
        for name, site in self.latent_sites.items():
            try:
                transform = biject_to(site.support)
            except NotImplementedError:
                raise ValueError(
                    f"site '{name}' has support {site.support}, which torch cannot map to an "
                    "unconstrained space (biject_to)"
                ) from None
            self._transforms[name] = transform
            self._unconstrained_shapes[name] = torch.Size(transform.inv.forward_shape(site.shape))
        self.latent_features = sum(math.prod(s) for s in self._unconstrained_shapes.values())
        self.observation_features = sum(math.prod(s.shape) for s in self.observed_sites.values())
        self.register_buffer("latent_loc", torch.zeros(self.latent_features))
        self.register_buffer("latent_scale", torch.ones(self.latent_features))
        self.register_buffer("observation_loc", torch.zeros(self.observation_features))
        self.register_buffer("observation_scale", torch.ones(self.observation_features))
        self.register_buffer("num_simulations", torch.zeros((), dtype=torch.long))
        self.embedding = embedding
        self.training_losses: list[float] = []
        self.validation_losses: list[float] = []

    # ------------------------------------------------------------------------------- hooks

    @abc.abstractmethod
    def _loss(self, u: Tensor, context: Tensor, generator: torch.Generator | None) -> Tensor:
        r"""The mean training loss of standardised latents ``u`` ``[B, K]`` given contexts
        ``[B, C]``; random draws (if any) come from ``generator`` when it is given."""

    @abc.abstractmethod
    def _sample(self, context: Tensor, num_samples: int) -> Tensor:
        r"""Draws ``[num_samples, K]`` of the standardised latents given one context ``[C]``."""

    @abc.abstractmethod
    def _log_prob(self, u: Tensor, context: Tensor) -> Tensor:
        r"""The log-density of standardised latents ``[*batch, K]`` given contexts
        ``[*batch, C]``, shaped ``batch``."""

    @abc.abstractmethod
    def _network_config(self) -> dict[str, Any]:
        r"""The plain configuration of the network, saved by :meth:`save`."""

    @classmethod
    @abc.abstractmethod
    def _network_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        r"""The keyword arguments of the constructor that rebuild the saved network."""

    @property
    def nfe(self) -> int:
        r"""The number of network evaluations of one call of :meth:`sample`."""
        return 1

    # -------------------------------------------------------------------------- properties

    @property
    def trained(self) -> bool:
        r"""Whether :meth:`fit` has run (or trained weights were loaded)."""
        return int(self.num_simulations) > 0

    def _check_trained(self) -> None:
        if not self.trained:
            raise ValueError(
                f"this {self.label} estimator is untrained: call "
                f"{self.label.lower()}.fit(num_simulations=...)"
            )

    def _context_features(self) -> int:
        r"""The size of the network's context: the observations' or the embedding's output."""
        if self.embedding is None:
            return self.observation_features
        probe = self._problem.sample_prior(2)
        x = self._flat_observations(probe)
        with torch.no_grad():
            training = self.embedding.training
            self.embedding.eval()
            try:
                out = self._embed(x)
            except Exception as error:
                raise ValueError(
                    f"the embedding network failed on observations shaped "
                    f"{self._embedding_input_shape(x)}: {error}"
                ) from error
            finally:
                self.embedding.train(training)
        if out.dim() != 2 or out.shape[0] != 2:
            raise ValueError(
                f"the embedding network must return [batch, features], got {tuple(out.shape)} "
                f"for a batch of 2"
            )
        return out.shape[-1]

    # ---------------------------------------------------------------------------- encoding

    def _flat_observations(self, x: Mapping[str, Any]) -> Tensor:
        r"""The observed sites flattened and concatenated, ``[*batch, D]`` (not standardised)."""
        parts, batch = [], None
        for name, site in self.observed_sites.items():
            if name not in x:
                raise ValueError(
                    f"the observation of site '{name}' is missing; this estimator conditions "
                    f"on {list(self.observed)}"
                )
            value = _observation_tensor(x[name])
            n = len(site.shape)
            if value.dim() < n or tuple(value.shape[value.dim() - n :]) != tuple(site.shape):
                raise ValueError(
                    f"the observation of site '{name}' has shape {tuple(value.shape)}, but the "
                    f"estimator was trained on simulations of shape {tuple(site.shape)}"
                )
            here = value.shape[: value.dim() - n]
            if batch is not None and here != batch:
                raise ValueError(
                    f"observations have different batch shapes {tuple(batch)} and {tuple(here)}"
                )
            batch = here
            parts.append(value.reshape(*here, -1))
        unknown = sorted(set(x) - set(self.observed_sites) - set(self.latent_sites))
        if unknown:
            raise ValueError(
                f"observations have sites {unknown} that this estimator does not condition on; "
                f"it conditions on {list(self.observed)}"
            )
        device = self.latent_loc.device
        return torch.cat([p.to(device=device, dtype=self.latent_loc.dtype) for p in parts], -1)

    def _embedding_input_shape(self, x: Tensor) -> tuple[int, ...]:
        if len(self.observed_sites) == 1:
            (site,) = self.observed_sites.values()
            return (*x.shape[:-1], *site.shape)
        return tuple(x.shape)

    def _embed(self, x: Tensor) -> Tensor:
        r"""The context of the network from flat observations ``[*batch, D]``: the
        standardised observations, through the embedding network if there is one."""
        x = (x - self.observation_loc) / self.observation_scale
        if self.embedding is None:
            return x
        batch = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if len(self.observed_sites) == 1:
            (site,) = self.observed_sites.values()
            x = x.reshape(-1, *site.shape)
        out = self.embedding(x)
        return out.reshape(*batch, out.shape[-1])

    def _encode(self, values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        r"""Latent values mapped to unconstrained space and flattened, ``[*batch, K]``, with
        :math:`\log |\det \partial T(z) / \partial z|`, ``[*batch]``."""
        parts, log_det, batch = [], 0.0, None
        for name, site in self.latent_sites.items():
            if name not in values:
                raise ValueError(
                    f"values are missing the latent site '{name}'; latent sites are "
                    f"{list(self.latent_sites)}"
                )
            value = torch.as_tensor(values[name]).to(self.latent_loc)
            n = len(site.shape)
            if value.dim() < n or tuple(value.shape[value.dim() - n :]) != tuple(site.shape):
                raise ValueError(
                    f"values of site '{name}' must be shaped [*batch, "
                    f"{', '.join(map(str, site.shape))}], got {tuple(value.shape)}"
                )
            here = value.shape[: value.dim() - n]
            if batch is not None and here != batch:
                raise ValueError(
                    f"values have different batch shapes {tuple(batch)} and {tuple(here)}"
                )
            batch = here
            transform = self._transforms[name]
            z = transform.inv(value)
            jacobian = transform.log_abs_det_jacobian(z, value)
            log_det = log_det + jacobian.reshape(*here, -1).sum(-1)
            parts.append(z.reshape(*here, -1))
        return torch.cat(parts, -1), log_det

    def _decode(self, z: Tensor) -> dict[str, Tensor]:
        r"""Flat unconstrained values ``[*batch, K]`` back to constrained values by site."""
        values, start = {}, 0
        batch = z.shape[:-1]
        for name, shape in self._unconstrained_shapes.items():
            size = math.prod(shape)
            part = z[..., start : start + size].reshape(*batch, *shape)
            values[name] = self._transforms[name](part).reshape(
                *batch, *self.latent_sites[name].shape
            )
            start += size
        return values

    # -------------------------------------------------------------------------- simulation

    def simulate(self, num_simulations: int, *, seed: int | None = None) -> dict[str, Tensor]:
        r"""Draws :math:`(\theta_i, x_i) \sim p(\theta) p(x \mid \theta)` from the model.

        The model runs under a particle plate (vectorised), in batches of 10,000.

        Arguments:
            num_simulations: The number :math:`N` of simulations.
            seed: If given, the draws are reproducible and the global random state is left
                alone.

        Returns:
            Every latent and observed site, each shaped ``[N, *site.shape]``.
        """
        if not isinstance(num_simulations, int) or num_simulations < 1:
            raise ValueError(
                f"num_simulations must be a positive integer, got {num_simulations!r}"
            )
        chunks = []
        with seeded(seed, self._problem.device):
            left = num_simulations
            while left > 0:
                size = min(left, _SIMULATION_BATCH)
                chunks.append(self._problem.sample_prior(size))
                left -= size
        names = [*self.latent_sites, *self.observed_sites]
        return {n: torch.cat([c[n] for c in chunks]) for n in names}

    # ---------------------------------------------------------------------------- training

    def fit(
        self,
        num_simulations: int = 10_000,
        *,
        simulations: Mapping[str, Tensor] | None = None,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        validation_fraction: float = 0.1,
        patience: int | None = None,
        lr_decay: float | None = None,
        ema: float | None = None,
        clip: float | None = None,
        progress: bool = True,
        seed: int | None = None,
    ) -> list[float]:
        r"""Simulates the model and trains the network on the simulations, with early stopping.

        The simulations are mapped to the standardised unconstrained space of the class
        docstring; the standardisation (mean and standard deviation of the training
        simulations) is fixed by the first call of :meth:`fit`, later calls refine the same
        estimator. A fraction ``validation_fraction`` is held out; each epoch runs Adam over
        shuffled minibatches of the rest, minimising the estimator's loss :math:`\ell(\phi)`
        (see the class docstring), then evaluates :math:`\ell` on the held-out simulations with
        the moving average of the weights, :math:`\bar\phi \leftarrow \beta \bar\phi + (1 -
        \beta) \phi` after each step (Polyak averaging, which removes much of the minibatch
        noise). A loss that draws noise (times, perturbations) draws it for validation from a
        generator seeded the same way at every epoch, so that validation losses differ only
        by the weights. The learning rate is multiplied by ``lr_decay`` after
        ``patience // 4`` epochs without a new lowest validation loss; training stops after
        ``patience`` such epochs, or after ``max_epochs``, and keeps the averaged weights of
        the lowest validation loss.

        Options left None take the estimator's defaults, :attr:`fit_defaults`.

        Arguments:
            num_simulations: The number :math:`N` of simulations.
            simulations: Simulations to train on instead (e.g. from :meth:`simulate`): every
                latent and observed site, shaped ``[N, *site.shape]``.
            max_epochs: The maximum number of epochs.
            batch_size: The minibatch size.
            lr: Adam's learning rate.
            validation_fraction: The fraction of simulations held out, in :math:`(0, 1)`.
            patience: Epochs without improvement of the validation loss before stopping.
            lr_decay: The factor that multiplies the learning rate after ``patience // 4``
                epochs without improvement (1 keeps it constant).
            ema: The decay :math:`\beta` of the moving average of the weights, or 0 to
                validate and keep the raw weights.
            clip: The maximum gradient norm, or 0 not to clip.
            progress: Whether to show a progress bar.
            seed: Seeds the simulations, the split, the minibatches and the loss's noise (the
                initial weights are drawn when the estimator is made); the global random state
                is left alone.

        Returns:
            The mean training loss of each epoch (also in :attr:`training_losses`; the
            validation losses are in :attr:`validation_losses`).

        Raises:
            ValueError: For bad options or simulations, or when fewer than 2 finite
                simulations remain.
            FloatingPointError: If the training loss becomes NaN or infinite.
        """
        given = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "patience": patience,
            "lr_decay": lr_decay,
            "ema": ema,
            "clip": clip,
        }
        options = {k: self.fit_defaults[k] if v is None else v for k, v in given.items()}
        if not 0 < validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must lie in (0, 1), got {validation_fraction!r}"
            )
        if min(options["max_epochs"], options["batch_size"], options["patience"]) < 1 or not (
            options["lr"] > 0
        ):
            raise ValueError("max_epochs, batch_size, patience and lr must be positive")
        if not 0 < options["lr_decay"] <= 1:
            raise ValueError(f"lr_decay must lie in (0, 1], got {options['lr_decay']!r}")
        if not 0 <= options["ema"] < 1:
            raise ValueError(f"ema must lie in [0, 1), got {options['ema']!r}")
        if simulations is None:
            simulations = self.simulate(num_simulations, seed=seed)
        theta, x = self._training_data(simulations)
        with seeded(seed, theta.device):
            return self._train(
                theta, x, validation_fraction=validation_fraction, progress=progress, **options
            )

    def _training_data(self, simulations: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            theta, _ = self._encode(
                {n: simulations[n] for n in self.latent_sites if n in simulations}
            )
            x = self._flat_observations(
                {n: simulations[n] for n in self.observed_sites if n in simulations}
            )
        if theta.dim() != 2 or x.dim() != 2 or theta.shape[0] != x.shape[0]:
            raise ValueError(
                "simulations must hold every latent and observed site with one leading "
                f"simulation dimension; got latents {tuple(theta.shape)}, observations "
                f"{tuple(x.shape)}"
            )
        finite = torch.isfinite(theta).all(-1) & torch.isfinite(x).all(-1)
        dropped = int((~finite).sum())
        if dropped:
            warnings.warn(
                f"{dropped} of {len(finite)} simulations have NaN or infinite values (or lie on "
                "the boundary of a latent site's support); they are left out",
                RuntimeWarning,
                stacklevel=3,
            )
        theta, x = theta[finite], x[finite]
        if len(theta) < 2:
            raise ValueError(f"only {len(theta)} finite simulations: need at least 2")
        return theta, x

    def _standardise_from(self, theta: Tensor, x: Tensor) -> None:
        def scale(v: Tensor) -> Tensor:
            s = v.std(0) if len(v) > 1 else torch.ones_like(v[0])
            return torch.where(s > 1e-8, s, torch.ones_like(s))

        self.latent_loc.copy_(theta.mean(0))
        self.latent_scale.copy_(scale(theta))
        self.observation_loc.copy_(x.mean(0))
        self.observation_scale.copy_(scale(x))

    def _objective(self, theta: Tensor, x: Tensor, generator: torch.Generator | None) -> Tensor:
        r"""The loss of unconstrained latents and flat observations (standardised here)."""
        u = (theta - self.latent_loc) / self.latent_scale
        return self._loss(u, self._embed(x), generator)

    def _train(
        self,
        theta: Tensor,
        x: Tensor,
        *,
        max_epochs: int,
        batch_size: int,
        lr: float,
        validation_fraction: float,
        patience: int,
        lr_decay: float,
        ema: float,
        clip: float,
        progress: bool,
    ) -> list[float]:
        n = len(theta)
        order = torch.randperm(n, device=theta.device)
        num_valid = min(max(1, round(validation_fraction * n)), n - 1)
        valid, train = order[:num_valid], order[num_valid:]
        if not self.trained:
            self._standardise_from(theta[train], x[train])
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = adamw(parameters, lr=lr)
        scheduler = None
        if lr_decay < 1:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=lr_decay, patience=max(1, patience // 4), threshold=0.0
            )
        batch_size = min(batch_size, len(train))
        averages = [p.detach().clone() for p in parameters] if ema > 0 else None
        best, best_state, waited = math.inf, None, 0
        training, validation = [], []
        try:
            with tqdm(total=max_epochs, desc=self.label, disable=not progress) as bar:
                for epoch in range(max_epochs):
                    self.train()
                    total = 0.0
                    shuffled = train[torch.randperm(len(train), device=theta.device)]
                    for batch in shuffled.split(batch_size):
                        loss = self._objective(theta[batch], x[batch], None)
                        value = loss.item()
                        if not math.isfinite(value):
                            raise FloatingPointError(
                                f"the {self.label} loss is {value} at epoch {epoch}: lower lr "
                                "or clip gradients harder"
                            )
                        optimizer.zero_grad()
                        loss.backward()
                        if clip > 0:
                            nn.utils.clip_grad_norm_(parameters, clip)
                        optimizer.step()
                        if averages is not None:
                            with torch.no_grad():
                                torch._foreach_lerp_(averages, parameters, 1 - ema)
                        total += value * len(batch)
                    training.append(total / len(train))

                    self.eval()
                    _swap(parameters, averages)  # validate (and keep) the averaged weights
                    generator = torch.Generator(theta.device).manual_seed(_VALIDATION_SEED)
                    with torch.no_grad():
                        loss = sum(
                            self._objective(theta[b], x[b], generator).item() * len(b)
                            for b in valid.split(4096)
                        ) / len(valid)
                    validation.append(loss)
                    if loss < best:
                        best, waited = loss, 0
                        best_state = copy.deepcopy(self.state_dict())
                    else:
                        waited += 1
                    _swap(parameters, averages)
                    if scheduler is not None:
                        scheduler.step(loss)
                    bar.update()
                    bar.set_postfix(
                        train=f"{training[-1]:.3f}", valid=f"{loss:.3f}", refresh=False
                    )
                    if waited >= patience:
                        break
        finally:
            self.eval()
        if best_state is not None:
            self.load_state_dict(best_state)
        self.num_simulations.fill_(int(self.num_simulations) + n)
        self.training_losses += training
        self.validation_losses += validation
        return training

    # ---------------------------------------------------------------------------- inference

    def _observation(self, x: Mapping[str, Any] | Tensor) -> Tensor:
        r"""A given observation (or batch), flat and checked to be finite."""
        if not isinstance(x, Mapping):
            if len(self.observed) != 1:
                raise ValueError(
                    f"this estimator conditions on several sites {list(self.observed)}: pass "
                    "the observation as a dict by site name"
                )
            x = {self.observed[0]: x}
        for name in self.observed:
            if name in x and not torch.isfinite(_observation_tensor(x[name])).all():
                raise ValueError(
                    f"the observation of site '{name}' has NaN or infinite entries; "
                    f"{self.label} conditions on finite observations only"
                )
        return self._flat_observations(x)

    def sample(self, x: Mapping[str, Any] | Tensor, num_samples: int) -> dict[str, Tensor]:
        r"""Draws from the estimated posterior :math:`q(\theta \mid x)` of one observation.

        Arguments:
            x: The observation: a dict by observed site name, or a tensor when one site is
                observed, shaped as the simulations of each site.
            num_samples: The number of draws.

        Returns:
            Draws of every latent site (constrained), each shaped ``[num_samples,
            *site.shape]``.

        Raises:
            ValueError: If the estimator is untrained or the observation does not fit.
        """
        self._check_trained()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        x = self._observation(x)
        if x.dim() != 1:
            raise ValueError(
                f"sample takes one observation, got a batch {tuple(x.shape[:-1])} of them"
            )
        with torch.no_grad():
            u = self._sample(self._embed(x), num_samples)
            return self._decode(u * self.latent_scale + self.latent_loc)

    def log_prob(self, values: Mapping[str, Tensor], x: Mapping[str, Any] | Tensor) -> Tensor:
        r"""The estimated posterior log-density :math:`\log q(\theta \mid x)` of constrained
        latent values (with the Jacobian of the unconstrained map, see the class docstring).

        Arguments:
            values: Latent values by site, each shaped ``[*batch, *site.shape]``.
            x: The observation (as in :meth:`sample`), or a batch of them whose batch shape
                broadcasts with the values'.

        Returns:
            The log-densities, shaped ``[*batch]``; differentiable in the values.
        """
        self._check_trained()
        z, log_det = self._encode(values)
        context = self._embed(self._observation(x))
        u = (z - self.latent_loc) / self.latent_scale
        if context.dim() > 1:
            batch = torch.broadcast_shapes(u.shape[:-1], context.shape[:-1])
            u = u.expand(*batch, u.shape[-1])
            context = context.expand(*batch, context.shape[-1])
        log_q = self._log_prob(u, context)
        return log_q - self.latent_scale.log().sum() - log_det

    # ---------------------------------------------------------------------------- save/load

    @classmethod
    def _format(cls) -> str:
        return f"condgen-{cls.label.lower()}"

    def _config(self) -> dict[str, Any]:
        config = {
            "observed": list(self.observed),
            **self._network_config(),
            "latent_sites": {n: list(s.shape) for n, s in self.latent_sites.items()},
            "observed_sites": {n: list(s.shape) for n, s in self.observed_sites.items()},
            "embedding": None
            if self.embedding is None
            else f"{type(self.embedding).__module__}.{type(self.embedding).__qualname__}",
            "training_losses": list(self.training_losses),
            "validation_losses": list(self.validation_losses),
        }
        check_plain(config, f"the {self.label} configuration")
        return config

    def save(self, path: str | os.PathLike) -> None:
        r"""Saves the estimator atomically, as plain configuration and tensors only (no
        pickled code): read it back with :meth:`load`.

        The file holds ``{"format": "condgen-<label>", "version": 1, "config": {...},
        "state_dict": {...}}``: the observed site names, the network's configuration, the
        site shapes, the loss histories, and the weights and standardisation buffers.

        Example:
            >>> import condgen
            >>> from condgen.infer import NPE
            >>> task = condgen.evaluate.TwoMoons()
            >>> estimator = NPE(task.model, observed=["x"], transforms=1)
            >>> losses = estimator.fit(num_simulations=200, max_epochs=1, progress=False)
            >>> estimator.save("npe.pt")
            >>> loaded = NPE.load("npe.pt", task.model)
            >>> loaded.sample(task.data, 10)["theta"].shape
            torch.Size([10, 2])
        """
        write(path, self._format(), self.version, self._config(), self.state_dict())

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: Callable,
        *,
        embedding: nn.Module | None = None,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
        map_location: str | torch.device | None = None,
    ) -> PosteriorEstimator:
        r"""Loads an estimator saved by :meth:`save`, for the same model.

        The file is read with ``torch.load(weights_only=True)``, which refuses pickled code;
        the estimator is rebuilt from its configuration for ``model`` (which the file does not
        hold), after checking that the model has the saved sites and shapes.

        Arguments:
            path: The file.
            model: The Pyro model the estimator was trained for.
            embedding: An instance of the embedding network, when one was saved (its weights
                are loaded into it).
            args: Positional arguments of the model.
            kwargs: Keyword arguments of the model.
            map_location: As in :func:`torch.load`.

        Raises:
            ValueError: If the file is not a file of this estimator, or does not match the
                model or the embedding.
        """
        path, label = os.fspath(path), cls.label
        what, hint = f"condgen {label} file", f"{label.lower()}.save(path)"
        document = read(path, cls._format(), cls.version, what, hint, map_location)
        config, state = document["config"], document["state_dict"]
        if config["embedding"] is not None and embedding is None:
            raise ValueError(
                f"{path} holds the weights of an embedding network ({config['embedding']}): "
                f"pass an instance to load them into, {cls.__name__}.load(path, model, "
                "embedding=...)"
            )
        if config["embedding"] is None and embedding is not None:
            raise ValueError(f"{path} was saved without an embedding network")
        estimator = cls(
            model,
            config["observed"],
            embedding=embedding,
            args=args,
            kwargs=kwargs,
            **cls._network_options(config),
        )
        for kind, sites in (
            ("latent", estimator.latent_sites),
            ("observed", estimator.observed_sites),
        ):
            saved = {n: list(s) for n, s in config[f"{kind}_sites"].items()}
            found = {n: list(s.shape) for n, s in sites.items()}
            if saved != found:
                raise ValueError(
                    f"{path} was trained for a model with {kind} sites {saved}, but this model "
                    f"has {found}"
                )
        network = estimator._network_config()
        if network != {k: config.get(k) for k in network}:
            raise ValueError(f"{path} does not match the model's dimensions")
        try:
            estimator.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"the weights in {path} do not fit the estimator: {error}") from None
        estimator.training_losses = list(config.get("training_losses", []))
        estimator.validation_losses = list(config.get("validation_losses", []))
        return estimator

    def extra_repr(self) -> str:
        latent = ", ".join(f"{n}{list(s.shape)}" for n, s in self.latent_sites.items())
        observed = ", ".join(f"{n}{list(s.shape)}" for n, s in self.observed_sites.items())
        return (
            f"latent=[{latent}], observed=[{observed}], "
            f"num_simulations={int(self.num_simulations)}"
        )


def _swap(parameters: list[nn.Parameter], averages: list[Tensor] | None) -> None:
    r"""Exchanges the values of the parameters and of their moving averages, in place."""
    if averages is None:
        return
    with torch.no_grad():
        for average, p in zip(averages, parameters, strict=True):
            current = p.detach().clone()
            p.copy_(average)
            average.copy_(current)


def _observed_names(
    model: Callable,
    observed: Sequence[str] | str | None,
    args: tuple,
    kwargs: dict,
    label: str,
) -> tuple[str, ...]:
    r"""The named observed sites and those the model observes itself, in order."""
    try:
        with torch.no_grad():
            trace = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    except Exception as error:
        raise ValueError(f"tracing the model failed: {error}") from error
    trace = prune_subsample_sites(trace)
    samples = {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["infer"].get("_deterministic")
    }
    if isinstance(observed, str):
        observed = [observed]
    named = list(observed or [])
    unknown = [n for n in named if n not in samples]
    if unknown:
        raise ValueError(
            f"observed has {unknown}, which are not sample sites of the model; its sample "
            f"sites are {list(samples)}"
        )
    self_observed = [n for n, s in samples.items() if s["infer"].get("was_observed")]
    names = tuple(dict.fromkeys([*named, *self_observed]))
    if not names:
        raise ValueError(
            "the model observes no site by itself: name the sites to condition on, e.g. "
            f"{label}(model, observed=['y'])"
        )
    return names

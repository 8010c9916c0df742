r"""The shared base of the amortized posterior estimators trained on a Pyro model's
simulations."""

from __future__ import annotations

__all__ = ["PosteriorEstimator"]

import abc
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from .._random import seeded
from .._training import WHOLE, Trainer, fingerprint, shuffled
from ..problem import Problem, Site
from .saving import load_estimator, save_estimator
from .sequential import fit_sequential
from .sites import embedding_features, flatten_observations, observation, observation_dict
from .training import (
    auto_batch_size,
    finite_simulations,
    split,
    standardisation,
    training_options,
)

_SIMULATION_BATCH = 10_000


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
        x_o: The observation of a sequential fit (:meth:`fit` with ``rounds > 1``) by observed
            site, or None for an amortized estimator. :meth:`sample` and :meth:`log_prob` warn
            at another observation.
        sequential_rounds: The diagnostics of each round of a sequential fit (see
            :func:`~condgen.amortized.fit_sequential`).

    Raises:
        ValueError: If ``observed`` names a site the model does not have, leaves no latent
            site, the model observes nothing, a latent site is discrete, or the model cannot
            be vectorised.
    """

    label: ClassVar[str] = "estimator"
    r"""The estimator's short name, in messages and in its file format."""
    fit_defaults: ClassVar[dict[str, Any]] = {
        "max_epochs": 1000,
        "batch_size": "auto",
        "lr": 2e-3,
        "patience": 20,
        "lr_decay": 0.5,
        "ema": 0.99,
        "clip": 5.0,
    }
    r"""The defaults of the training options of :meth:`fit` that are None there."""
    largest_batch: ClassVar[int] = 512
    r"""The largest minibatch of ``batch_size="auto"`` (see
    :func:`~condgen.amortized.training.auto_batch_size`)."""
    truncation_defaults: ClassVar[dict[str, Any]] = {
        "draws": 100_000,
        "oversampling": 100,
        "log_prob": {},
    }
    r"""The defaults of the truncated prior of sequential rounds (:meth:`fit` with
    ``rounds > 1``, see :class:`~condgen.amortized.TruncatedPrior`): the draws of
    :math:`q(\theta \mid x_o)` behind the threshold, the candidates per draw of
    sampling-importance-resampling, and the options of :meth:`_log_prob` there."""
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
        example = f"{self.label}(model, observed=['y'])"
        self._problem = Problem(poutine.uncondition(model), args=self.args, kwargs=self.kwargs)
        self.observed = self._problem.observation_sites(observed, example)
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
        self._unconstrained = self._problem.unconstrained(self.latent_sites, self.label)
        self.latent_features = self._unconstrained.features
        shapes = [tuple(s.shape) for s in self.observed_sites.values()]
        self.observation_features = sum(math.prod(s) for s in shapes)
        self._embedding_shape = shapes[0] if len(shapes) == 1 else (self.observation_features,)
        self.register_buffer("latent_loc", torch.zeros(self.latent_features))
        self.register_buffer("latent_scale", torch.ones(self.latent_features))
        self.register_buffer("observation_loc", torch.zeros(self.observation_features))
        self.register_buffer("observation_scale", torch.ones(self.observation_features))
        self.register_buffer("num_simulations", torch.zeros((), dtype=torch.long))
        self.embedding = embedding
        self.training_losses: list[float] = []
        self.validation_losses: list[float] = []
        self.x_o: dict[str, Tensor] | None = None
        self.sequential_rounds: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------- hooks

    @abc.abstractmethod
    def _loss(
        self, u: Tensor, context: Tensor, generator: torch.Generator | None, shard: slice
    ) -> Tensor:
        r"""The mean training loss of the standardised latents ``u[shard]`` of a minibatch
        ``u`` ``[B, K]`` given their contexts ``[len(u[shard]), C]``; random draws (if any)
        are made for the whole minibatch, from ``generator`` when it is given, and sliced."""

    @abc.abstractmethod
    def _sample(self, context: Tensor, num_samples: int) -> Tensor:
        r"""Draws ``[num_samples, K]`` of the standardised latents given one context ``[C]``."""

    @abc.abstractmethod
    def _log_prob(self, u: Tensor, context: Tensor, **options: Any) -> Tensor:
        r"""The log-density of standardised latents ``[*batch, K]`` given contexts
        ``[*batch, C]``, shaped ``batch``; ``options`` (those of
        :attr:`truncation_defaults`, when the truncation of sequential rounds asks) tune its
        computation."""

    @abc.abstractmethod
    def _network_config(self) -> dict[str, Any]:
        r"""The plain configuration of the network, saved by :meth:`save`."""

    @classmethod
    @abc.abstractmethod
    def _network_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        r"""The keyword arguments of the constructor that rebuild the saved network."""

    @property
    def nfe(self) -> int:
        r"""The network evaluations per draw of :meth:`sample` (here one batched pass)."""
        return 1

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
        x = self._flat_observations(self._problem.sample_prior(2))
        return embedding_features(self.embedding, self._embed, x, self._embedding_shape)

    # ---------------------------------------------------------------------------- encoding

    def _flat_observations(self, x: Mapping[str, Any]) -> Tensor:
        r"""The observed sites flattened and concatenated, ``[*batch, D]`` (not standardised)."""
        return flatten_observations(self.observed_sites, x, self.latent_sites, self.latent_loc)

    def _embed(self, x: Tensor) -> Tensor:
        r"""The context of the network from flat observations ``[*batch, D]``: the
        standardised observations, through the embedding network if there is one (which
        receives one observed site in its shape, or several flat)."""
        x = (x - self.observation_loc) / self.observation_scale
        if self.embedding is None:
            return x
        batch = x.shape[:-1]
        out = self.embedding(x.reshape(-1, *self._embedding_shape))
        return out.reshape(*batch, out.shape[-1])

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
        with seeded(seed, self._problem.device):
            return self._problem.sample_prior(num_simulations, _SIMULATION_BATCH)

    # ---------------------------------------------------------------------------- training

    def fit(
        self,
        num_simulations: int = 10_000,
        *,
        simulations: Mapping[str, Tensor] | None = None,
        rounds: int = 1,
        x_o: Mapping[str, Any] | Tensor | None = None,
        truncation: float = 1e-4,
        truncation_draws: int | None = None,
        oversampling: int | None = None,
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
        checkpoint: str | os.PathLike | None = None,
        every: int | None = None,
        autocast: torch.dtype | None = None,
    ) -> list[float]:
        r"""Simulates the model and trains the network on the simulations, with early stopping.

        The estimator moves to the device and dtype of the simulations (those of the model's
        latent sites). The simulations are mapped to the standardised unconstrained space of
        the class docstring; the standardisation (mean and standard deviation of the training
        simulations) is fixed by the first call of :meth:`fit`, later calls refine the same
        estimator. A fraction ``validation_fraction`` is held out, and the network is trained
        by condgen's one trainer (``condgen._training.Trainer``, the loop of the priors too):
        AdamW over shuffled minibatches, a moving average of the weights, a learning rate that
        decays and early stopping on the validation loss, keeping the averaged weights of the
        lowest validation loss.

        With ``rounds`` :math:`R > 1` the fit is sequential, for the one observation ``x_o``
        (truncated sequential NPE, Deistler et al., 2022; see
        :func:`~condgen.amortized.fit_sequential`): round 1 simulates :math:`N / R` parameters
        from the prior, each later round its share from the prior truncated to the region
        :math:`\{\theta : \log q(\theta \mid x_o) \ge \tau_\epsilon\}` of the current
        estimate, :math:`\tau_\epsilon` the ``truncation`` quantile :math:`\epsilon` of
        :math:`\log q` under :math:`q(\cdot \mid x_o)`, and the network is trained again on all
        simulations so far with the same loss. The budget is :math:`N` simulations over all
        rounds. The estimator is then valid at ``x_o`` only (:attr:`x_o` records it).

        Options left None take the estimator's defaults, :attr:`fit_defaults` and
        :attr:`truncation_defaults`.

        Arguments:
            num_simulations: The number :math:`N` of simulations (over all rounds).
            simulations: Simulations to train on instead (e.g. from :meth:`simulate`): every
                latent and observed site, shaped ``[N, *site.shape]``; one round only.
            rounds: The number :math:`R` of rounds; 1 trains an amortized estimator.
            x_o: The observation of a sequential fit, as :meth:`sample` takes it; needed when
                ``rounds > 1`` (with ``rounds=1`` it is checked, and not used).
            truncation: The quantile :math:`\epsilon` in :math:`(0, 1)` of the truncation.
            truncation_draws: The draws of :math:`q(\theta \mid x_o)` that estimate
                :math:`\tau_\epsilon`.
            oversampling: The candidates per draw when the truncated prior is sampled by
                sampling-importance-resampling.
            max_epochs: The maximum number of epochs (of each round).
            batch_size: The minibatch size, or ``"auto"``: the training simulations over 20,
                at least 16 and at most :attr:`largest_batch`, so that an epoch is about 20
                steps at any budget (:func:`~condgen.amortized.training.auto_batch_size`).
            lr: Adam's learning rate.
            validation_fraction: The fraction of simulations held out, in :math:`(0, 1)`.
            patience: Epochs without improvement of the validation loss before stopping.
            lr_decay: The factor that multiplies the learning rate after ``patience // 4``
                epochs without improvement (1 keeps it constant).
            ema: The decay :math:`\beta` of the moving average of the weights, or 0 to
                validate and keep the raw weights.
            clip: The maximum gradient norm, or 0 not to clip.
            progress: Whether to show a progress bar (one per round).
            seed: Seeds the simulations, the split, the minibatches and the loss's noise, and
                with ``rounds > 1`` every round's truncation and simulations (the initial
                weights are drawn when the estimator is made); the global random state is left
                alone.
            checkpoint: A file that makes the fit resumable: every ``every`` epochs and at the
                end the whole training state is written to it atomically, and a call with the
                same arguments that finds it goes on from there (or, once finished, returns
                the stored losses at once). Resuming needs the same simulations: pass ``seed``
                or ``simulations``. A file of another fit raises a ValueError. Not with
                ``rounds > 1``.
            every: The epochs between checkpoints (None: 1).
            autocast: None, or ``torch.bfloat16`` for mixed-precision losses (see
                :func:`~condgen.priors.training.fit_path_prior`); it pays on CUDA with large
                embedding networks, hardly with the default small MLPs.

        Returns:
            The mean training loss of each epoch, of all rounds in turn (also in
            :attr:`training_losses`; the validation losses are in :attr:`validation_losses`).

        Raises:
            ValueError: For bad options, observations or simulations, or when fewer than 2
                finite simulations remain.
            FloatingPointError: If the training loss becomes NaN or infinite.

        Example:
            >>> import condgen
            >>> from condgen.amortized import NPE
            >>> task = condgen.evaluate.GaussianLinear(dim=2)
            >>> npe = NPE(task.model, observed=["x"], transforms=1, hidden_features=[16])
            >>> # a real fit: npe.fit(num_simulations=10_000, rounds=4, x_o=task.data)
            >>> losses = npe.fit(400, rounds=2, x_o=task.data, max_epochs=2, progress=False,
            ...                  seed=0)
            >>> int(npe.num_simulations), [r["sampler"] for r in npe.sequential_rounds]
            (400, ['prior', 'rejection'])
        """
        given = {"max_epochs": max_epochs, "batch_size": batch_size, "lr": lr}
        given |= {"patience": patience, "lr_decay": lr_decay, "ema": ema, "clip": clip}
        options = training_options(self.fit_defaults, given, validation_fraction)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
        if x_o is not None:
            x_o = self._observation(x_o, "x_o")
        train = partial(
            self._train, options=options, validation_fraction=validation_fraction,
            progress=progress, autocast=autocast,
        )  # fmt: skip
        if rounds > 1:
            if x_o is None:
                raise ValueError(
                    f"rounds={rounds} trains for one observation: pass it, fit(..., "
                    f"rounds={rounds}, x_o=observation)"
                )
            if simulations is not None:
                raise ValueError(
                    "simulations cannot be given with rounds > 1: the rounds simulate from "
                    "truncated priors that depend on the estimate"
                )
            if checkpoint is not None:
                raise ValueError(
                    "checkpoint cannot be given with rounds > 1: a sequential fit cannot be "
                    "resumed (each round's simulations depend on the previous estimate)"
                )
            return fit_sequential(
                self, num_simulations, rounds, x_o, train, truncation=truncation,
                draws=truncation_draws, oversampling=oversampling, seed=seed,
                validation_fraction=validation_fraction,
            )  # fmt: skip
        if simulations is None:
            simulations = self.simulate(num_simulations, seed=seed)
        epochs, used = train(simulations, seed=seed, checkpoint=checkpoint, every=every)
        self.num_simulations.fill_(int(self.num_simulations) + used)
        return epochs

    def _train(
        self,
        simulations: Mapping[str, Tensor],
        *,
        options: Mapping[str, Any],
        validation_fraction: float,
        progress: bool,
        autocast: torch.dtype | None,
        seed: int | None,
        checkpoint: str | os.PathLike | None = None,
        every: int | None = None,
        label: str | None = None,
        held_out: Tensor | None = None,
    ) -> tuple[list[float], int]:
        r"""Trains the network on ``simulations`` (see :meth:`fit`), appends the losses to
        :attr:`training_losses` and :attr:`validation_losses`, and returns the training losses
        of the epochs and the number of finite simulations trained on (the caller counts them
        in :attr:`num_simulations`). ``held_out``, a mask ``[N]``, fixes the validation
        simulations (else a random ``validation_fraction`` of them); ``label`` names the
        progress bar."""
        self._follow(simulations)
        theta, x, finite = self._training_data(simulations)
        with seeded(seed, theta.device):
            rest, valid = split(len(theta), validation_fraction, theta.device)
            if held_out is not None:
                held_out = held_out.to(finite.device)[finite]
                if 0 < int(held_out.sum()) < len(held_out):
                    rest, valid = held_out.logical_not().nonzero()[:, 0], held_out.nonzero()[:, 0]
            if not self.trained:
                self.latent_loc, self.latent_scale = standardisation(theta[rest])
                self.observation_loc, self.observation_scale = standardisation(x[rest])
            batch = options["batch_size"]
            if batch == "auto":
                batch = auto_batch_size(len(rest), self.largest_batch)
            trainer = Trainer(
                self, lr=options["lr"], clip=options["clip"], ema=options["ema"], warmup=False,
                label=label or self.label, autocast=autocast,
            )  # fmt: skip
            identity = None if checkpoint is None else {**options, "data": fingerprint(theta, x)}
            history = trainer.fit(
                lambda i, generator, shard=WHOLE: self._objective(
                    theta[i], x[i], generator, shard
                ),
                shuffled(rest, min(batch, len(rest))),
                epochs=options["max_epochs"],
                validation=valid,
                patience=options["patience"],
                lr_decay=options["lr_decay"],
                progress=progress,
                checkpoint=checkpoint,
                every=every,
                identity=identity,
            )
        self.training_losses += history.epochs
        self.validation_losses += history.validation
        return history.epochs, len(theta)

    def _follow(self, simulations: Mapping[str, Tensor]) -> None:
        r"""Moves the estimator (network, embedding and standardisation) to the device and
        floating dtype of the simulations of the first latent site, so that it trains and
        draws in the model's precision (float64 simulations give a float64 estimator)."""
        reference = simulations.get(next(iter(self.latent_sites)))
        if isinstance(reference, Tensor) and reference.is_floating_point():
            self.to(device=reference.device, dtype=reference.dtype)

    def _training_data(self, simulations: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        r"""The finite simulations as unconstrained latents ``[N, K]`` and flat observations
        ``[N, D]``, and the mask of the finite ones among all."""
        observations = {n: v for n, v in simulations.items() if n in self.observed_sites}
        with torch.no_grad():
            theta, _ = self._unconstrained.pack(simulations, self.latent_loc)
            return finite_simulations(theta, self._flat_observations(observations))

    def _objective(
        self, theta: Tensor, x: Tensor, generator: torch.Generator | None, shard: slice = WHOLE
    ) -> Tensor:
        r"""The loss of the ``shard`` of a minibatch of unconstrained latents and flat
        observations (standardised here)."""
        u = (theta - self.latent_loc) / self.latent_scale
        return self._loss(u, self._embed(x[shard]), generator, shard)

    # ---------------------------------------------------------------------------- inference

    def _observation(self, x: Mapping[str, Any] | Tensor, name: str) -> dict[str, Tensor]:
        r"""One observation ``x`` (a tensor when one site is observed) by observed site, as
        tensors of the site shapes, checked to be finite; errors name the argument ``name``."""
        try:
            x = observation_dict(self.observed_sites, x)
            flat = observation(
                self.observed_sites, x, self.latent_sites, self.latent_loc, self.label
            )
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        if flat.dim() != 1:
            raise ValueError(
                f"{name} must be one observation, got a batch {tuple(flat.shape[:-1])} of them"
            )
        return {n: torch.as_tensor(x[n]) for n in self.observed_sites}

    def _context(self, x: Mapping[str, Any] | Tensor) -> Tensor:
        r"""The network's context of an observation (or a batch of them), ``[*batch, C]``;
        warns when the estimator was trained sequentially for another observation."""
        flat = observation(self.observed_sites, x, self.latent_sites, self.latent_loc, self.label)
        if self.x_o is not None:
            trained = self._flat_observations(self.x_o).to(flat)
            tolerance = 1e-5 * (1 + trained.abs().max())
            if not bool(((flat - trained).abs() <= tolerance).all()):
                warnings.warn(
                    f"this {self.label} estimator was trained sequentially for one observation "
                    f"(fit(rounds={len(self.sequential_rounds)}, x_o=...), recorded in "
                    "estimator.x_o): its posterior at another observation is not valid, since "
                    "the later rounds simulated parameters near x_o's posterior only; train an "
                    "amortized estimator (rounds=1) for other observations",
                    UserWarning,
                    stacklevel=3,
                )
        return self._embed(flat)

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

        Warns:
            UserWarning: If the estimator was trained sequentially (:attr:`x_o`) for another
                observation.
        """
        self._check_trained()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        context = self._context(x)
        if context.dim() != 1:
            raise ValueError(
                f"sample takes one observation, got a batch {tuple(context.shape[:-1])} of them"
            )
        with torch.no_grad():
            u = self._sample(context, num_samples)
            return self._unconstrained.unpack(u * self.latent_scale + self.latent_loc)

    def log_prob(self, values: Mapping[str, Tensor], x: Mapping[str, Any] | Tensor) -> Tensor:
        r"""The estimated posterior log-density :math:`\log q(\theta \mid x)` of constrained
        latent values (with the Jacobian of the unconstrained map, see the class docstring).

        Arguments:
            values: Latent values by site, each shaped ``[*batch, *site.shape]``.
            x: The observation (as in :meth:`sample`), or a batch of them whose batch shape
                broadcasts with the values'.

        Returns:
            The log-densities, shaped ``[*batch]``; differentiable in the values.

        Warns:
            UserWarning: If the estimator was trained sequentially (:attr:`x_o`) for another
                observation.
        """
        self._check_trained()
        return self._log_density(values, self._context(x))

    def _log_density(
        self, values: Mapping[str, Tensor], context: Tensor, **options: Any
    ) -> Tensor:
        r""":meth:`log_prob` given the network's context; ``options`` go to :meth:`_log_prob`."""
        z, log_det = self._unconstrained.pack(values, self.latent_loc)
        u = (z - self.latent_loc) / self.latent_scale
        if context.dim() > 1:
            batch = torch.broadcast_shapes(u.shape[:-1], context.shape[:-1])
            u = u.expand(*batch, u.shape[-1])
            context = context.expand(*batch, context.shape[-1])
        log_q = self._log_prob(u, context, **options)
        return log_q - self.latent_scale.log().sum() - log_det

    # ---------------------------------------------------------------------------- save/load

    def save(self, path: str | os.PathLike) -> None:
        r"""Saves the estimator atomically, as plain configuration and tensors only (no
        pickled code): read it back with :meth:`load`.

        The file holds ``{"format": "condgen-<label>", "version": 1, "config": {...},
        "state_dict": {...}}``: the observed site names, the network's configuration, the
        site shapes, the loss histories, and the weights and standardisation buffers.

        Example:
            >>> import condgen
            >>> from condgen.amortized import NPE
            >>> task = condgen.evaluate.TwoMoons()
            >>> estimator = NPE(task.model, observed=["x"], transforms=1)
            >>> losses = estimator.fit(num_simulations=200, max_epochs=1, progress=False)
            >>> estimator.save("npe.pt")
            >>> loaded = NPE.load("npe.pt", task.model)
            >>> loaded.sample(task.data, 10)["theta"].shape
            torch.Size([10, 2])
        """
        save_estimator(self, path)

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
        return load_estimator(cls, path, model, embedding, args, kwargs, map_location)

    def extra_repr(self) -> str:
        latent = ", ".join(f"{n}{list(s.shape)}" for n, s in self.latent_sites.items())
        observed = ", ".join(f"{n}{list(s.shape)}" for n, s in self.observed_sites.items())
        return (
            f"latent=[{latent}], observed=[{observed}], "
            f"num_simulations={int(self.num_simulations)}"
        )

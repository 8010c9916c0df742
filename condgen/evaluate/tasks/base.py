r"""The base class of the conditioning tasks: a Pyro model, its data and a reference posterior."""

from __future__ import annotations

__all__ = ["Task"]

import abc
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..._random import check_seed
from ...problem import Problem


class Task(abc.ABC):
    r"""A Pyro model, an observation and reference draws of its posterior.

    A task with ``exact = True`` gives exact posterior draws: by default from
    :meth:`posterior`, the closed-form posterior of each latent site, or from its own exact
    sampler (an override of :meth:`reference_samples`). A task with ``exact = False`` has no
    exact sampler: it overrides :meth:`reference_samples` with an approximate long run and
    need not implement :meth:`posterior`.

    Attributes:
        name: A short name for tables (the task's name in :data:`TASKS`).
        description: One line for listings (``condgen tasks``).
        exact: Whether :meth:`reference_samples` draws the posterior exactly.
        default_methods: The names of :func:`condgen.methods.available` that apply to the
            task (``condgen compare`` runs them when no method is named).
        data: The observations, by site name (pass them to :func:`condgen.condition`).
    """

    name: str
    description: str = ""
    exact: bool = True
    default_methods: tuple[str, ...] = ("nuts", "svi", "importance")
    data: dict[str, Tensor]

    @abc.abstractmethod
    def model(self) -> None:
        r"""The Pyro model."""

    def posterior(self) -> dict[str, Distribution]:
        r"""The exact posterior of each latent site (the sites are independent a posteriori).

        Raises:
            NotImplementedError: If the task has no closed-form posterior distribution; its
                :meth:`reference_samples` then gives the reference draws.
        """
        kind = "exact" if self.exact else "approximate"
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form posterior distribution: use "
            f"reference_samples() for its {kind} posterior draws, and log_joint() for its "
            "unnormalised log posterior"
        )

    def log_evidence(self) -> float | None:
        r"""The exact log evidence :math:`\log p(y)` of the observation, or None where it has no
        closed form."""
        return None

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Posterior draws, ``[num_samples, *site.shape]`` per site: exact when
        :attr:`exact` is true. The global random state is left as it was."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(check_seed(seed))
        try:
            return {k: d.sample((num_samples,)) for k, d in self.posterior().items()}
        finally:
            torch.random.set_rng_state(generator_state)

    def log_joint(self, values: Mapping[str, Tensor]) -> Tensor:
        r"""The unnormalised log posterior :math:`\log p(z, y) = \log p(z) + \log p(y \mid
        z)` of the model at the observation, for a batch of latent values.

        Arguments:
            values: Latent values by site name, each shaped ``[num_particles, *site.shape]``
                and inside the prior's support.

        Returns:
            The log-joint density, shaped ``[num_particles]``.
        """
        return Problem(self.model, self.data).log_joint(values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _generator(seed: int) -> torch.Generator:
    r"""A generator of its own, seeded with ``seed``: simulated data leave the global random
    state alone."""
    return torch.Generator().manual_seed(check_seed(seed))

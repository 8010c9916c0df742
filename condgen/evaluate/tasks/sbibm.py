r"""sbibm's files (observations, true parameters, reference draws) and the base class of the
tasks that read them, without importing sbibm."""

from __future__ import annotations

__all__ = ["SbibmTask", "read_sbibm", "rejection_sample", "sbibm_files"]

import bz2
import csv
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pyro
import torch
from torch import Tensor
from torch.distributions import biject_to

from .base import Task, _generator


def sbibm_files(task: str) -> Path:
    r"""The folder of sbibm's files of a task, ``<sbibm>/tasks/<task>/files``, found without
    importing sbibm (whose imports need packages condgen does not have).

    Arguments:
        task: sbibm's name of the task, e.g. ``"two_moons"``.

    Raises:
        ImportError: If sbibm is not installed (the message says how to install it), or has
            no files for ``task``.
    """
    spec = importlib.util.find_spec("sbibm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the observations and reference draws of sbibm's task {task!r} are those of sbibm, "
            "which is not installed: `pip install --no-deps sbibm` (its data files only are "
            "read; nothing is downloaded), or pass an observation tensor"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tasks" / task / "files"
    if not folder.is_dir():
        raise ImportError(f"sbibm is installed but has no files for the task {task!r} at {folder}")
    return folder


def read_sbibm(task: str, file: str, num_observation: int | None = None) -> Tensor:
    r"""One of sbibm's files of a task as a tensor.

    A CSV file (plain or ``.bz2``, with a header row) is read as ``[rows, columns]``; a ``.pt``
    file (e.g. ``bernoulli_glm``'s ``design_matrix.pt``) is loaded with
    ``torch.load(weights_only=True)``, which runs no code.

    Arguments:
        task: sbibm's name of the task.
        file: The file's name, e.g. ``"observation.csv"``,
            ``"reference_posterior_samples.csv.bz2"``, ``"design_matrix.pt"``.
        num_observation: The observation's number (its folder ``num_observation_<n>``), or
            None for a file of the task's ``files`` folder itself.

    Raises:
        ImportError: If sbibm is not installed, or lacks the file.

    Example:
        >>> from condgen.evaluate.tasks.sbibm import read_sbibm
        >>> read_sbibm("sir", "observation.csv", 1).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """
    folder = sbibm_files(task)
    if num_observation is not None:
        folder = folder / f"num_observation_{num_observation}"
    path = folder / file
    if not path.is_file():
        raise ImportError(f"sbibm is installed but has no file {path}")
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", newline="") as stream:
        rows = list(csv.reader(stream))[1:]
    return torch.tensor([[float(v) for v in row] for row in rows if row])


def rejection_sample(
    propose: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
    num_samples: int,
    seed: int,
    max_proposals: int,
    observation: Tensor,
) -> Tensor:
    r"""Exact draws by rejection: proposals are drawn in batches, sized by the acceptance rate
    so far, until ``num_samples`` are accepted.

    Arguments:
        propose: ``propose(n, generator)`` returns ``n`` proposals ``[n, d]`` and whether each
            is accepted ``[n]`` (a boolean tensor).
        num_samples: The draws wanted.
        seed: Seed of the generator passed to ``propose``.
        max_proposals: The most proposals to make.
        observation: The observation (for the error message).

    Returns:
        ``[num_samples, d]`` accepted proposals.

    Raises:
        ValueError: If fewer than ``num_samples`` of ``max_proposals`` proposals are accepted.
    """
    generator = _generator(seed)
    kept, count, proposals, batch = [], 0, 0, max(num_samples, 1024)
    while count < num_samples and proposals < max_proposals:
        draws, accepted = propose(batch, generator)
        kept.append(draws[accepted])
        count, proposals = count + len(kept[-1]), proposals + batch
        rate = max(count, 1) / proposals
        batch = min(int(1.2 * (num_samples - count) / rate) + 1024, 2**20)
    if count < num_samples:
        raise ValueError(
            f"only {count} of {proposals} proposals fell in the prior box for the observation "
            f"{observation.reshape(-1).tolist()}: it is (nearly) out of the simulator's reach"
        )
    return torch.cat(kept)[:num_samples]


class SbibmTask(Task):
    r"""A task of the simulation-based inference benchmark (sbibm), observed at one of sbibm's
    observations or at a given one.

    The latent site is ``"theta"``, the observed site ``"x"``. sbibm numbers its observations
    1 to 10; each comes with the parameter that simulated it (:attr:`truth`) and 10,000
    reference posterior draws (:meth:`sbibm_samples`), read from the files of an installed
    sbibm (``pip install --no-deps sbibm``; nothing is downloaded, and sbibm is not imported).
    A task built on an observation tensor needs no sbibm, and has neither.

    :meth:`reference_samples` gives exact draws where the task has an exact sampler
    (``exact = True``), else sbibm's draws.

    Attributes:
        sbibm_name: sbibm's name of the task (its folder of files).
        num_observation: sbibm's observation number, or None for a given observation.
        truth: The parameter that simulated sbibm's observation, or None.

    References:
        | Benchmarking Simulation-Based Inference (Lueckmann et al., 2021)
        | https://arxiv.org/abs/2101.04653
    """

    sbibm_name: ClassVar[str]
    sbibm_options: ClassVar[dict[str, float]] = {}
    num_observations: ClassVar[int] = 10
    default_methods = ("nuts", "tempered")
    num_observation: int | None = None
    truth: Tensor | None = None
    _reference: Tensor | None = None

    @classmethod
    def sbibm(cls, observation: int | Tensor | Sequence[float] = 1) -> SbibmTask:
        r"""The task with sbibm's settings (:attr:`sbibm_options`), named by sbibm's name.

        Arguments:
            observation: sbibm's observation number, 1 to 10, or an observation.
        """
        task = cls(observation=observation, **cls.sbibm_options)
        task.name = cls.sbibm_name
        return task

    def _observe(self, observation: int | Tensor | Sequence[float], shape: Sequence[int]) -> None:
        r"""Sets :attr:`data` (``{"x": [*shape]}``), :attr:`num_observation` and :attr:`truth`
        from sbibm's observation number or from the given numbers (shaped ``shape``, flat, or
        ``[1, n]`` as sbibm gives them)."""
        shape = tuple(shape)
        size = math.prod(shape)
        if isinstance(observation, int) and not isinstance(observation, bool):
            if not 1 <= observation <= self.num_observations:
                raise ValueError(
                    f"sbibm's {self.sbibm_name} observations are numbered 1 to "
                    f"{self.num_observations}, got observation={observation}"
                )
            x = read_sbibm(self.sbibm_name, "observation.csv", observation)
            self.truth = read_sbibm(self.sbibm_name, "true_parameters.csv", observation)[0]
            self.num_observation = observation
        else:
            x = torch.as_tensor(observation, dtype=torch.get_default_dtype())
            shapes = dict.fromkeys((shape, (size,), (1, size)))
            if x.shape not in shapes:
                allowed = ", ".join(str(list(s)) for s in shapes)
                raise ValueError(
                    f"observation must be a number 1 to {self.num_observations} or {size} "
                    f"numbers (shaped {allowed}), got shape {list(x.shape)}"
                )
            if not torch.isfinite(x).all():
                raise ValueError("observation must be finite")
        self.data = {"x": x.reshape(shape)}

    def sbibm_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""``num_samples`` of sbibm's 10,000 reference posterior draws (a random subset chosen
        by ``seed``, without replacement), ``{"theta": [num_samples, *theta.shape]}``.

        Raises:
            ValueError: If the task was built on an observation tensor (no reference draws),
                or more draws than sbibm has are asked for.
        """
        if self.num_observation is None:
            raise ValueError(
                f"{type(self).__name__} has reference draws for sbibm's observations only "
                f"(observation=1..{self.num_observations}), not for a given observation tensor"
            )
        if self._reference is None:
            self._reference = read_sbibm(
                self.sbibm_name, "reference_posterior_samples.csv.bz2", self.num_observation
            )
        available = len(self._reference)
        if not 0 <= num_samples <= available:
            raise ValueError(f"sbibm has {available} reference draws, {num_samples} were asked")
        index = torch.randperm(available, generator=_generator(seed))[:num_samples]
        return {"theta": self._reference[index].to(torch.get_default_dtype())}

    def reweighted_reference(
        self, num_samples: int, seed: int = 0, num_proposals: int = 20_000, num_centres: int = 1000
    ) -> tuple[Tensor, Tensor, float]:
        r"""Draws of this model's posterior by importance sampling from a kernel density of
        part of sbibm's reference draws, beside sbibm's other draws: a check of the model
        against sbibm's reference posterior, where the task has no exact sampler.

        sbibm's draws are split at random (by ``seed``): ``num_centres`` are mapped to the
        unconstrained space of the prior's support (:math:`u = T^{-1}(	heta)`, e.g. the log of
        a positive parameter) and make the proposal, a Gaussian kernel density :math:`q(u) =
        rac1m \sum_j \mathcal{N}(u; u_j, h^2 \Sigma)` (:math:`\Sigma` their covariance,
        :math:`h = m^{-1/(p+4)}` Scott's factor); ``num_samples`` others are held out. The
        ``num_proposals`` proposals are weighted by :math:`w \propto p(	heta, x_o) / (q(u)
        |\det \partial u / \partial 	heta|)` with the model's own log joint, and resampled
        (multinomially) to ``num_samples``. Self-normalised importance sampling is consistent
        for any proposal that covers the posterior, so the draws follow this model's posterior
        up to the finite effective sample size, whatever sbibm's draws are; the held-out draws
        are independent of them.

        Arguments:
            num_samples: The draws returned on each side.
            seed: Seed of the split, the proposals and the resampling.
            num_proposals: Importance samples.
            num_centres: sbibm's draws that make the proposal (at most 10,000 -
                ``num_samples``).

        Returns:
            The resampled draws ``[num_samples, p]``, the held-out reference draws
            ``[num_samples, p]`` and the importance sampling's effective sample size
            :math:`(\sum w)^2 / \sum w^2`.
        """
        reference = self.sbibm_samples(num_centres + num_samples, seed)["theta"].double()
        centres, held_out = reference[:num_centres], reference[num_centres:]
        trace = pyro.poutine.trace(self.model).get_trace()
        transform = biject_to(trace.nodes["theta"]["fn"].support)
        u = transform.inv(centres)
        mean = u.mean(0)
        bandwidth = num_centres ** (-1 / (u.shape[1] + 4))
        cholesky = torch.linalg.cholesky(torch.cov(u.T).reshape(u.shape[1], -1)) * bandwidth
        generator = _generator(seed)
        pick = torch.randint(num_centres, (num_proposals,), generator=generator)
        noise = torch.randn(num_proposals, u.shape[1], generator=generator, dtype=u.dtype)
        proposals = u[pick] + noise @ cholesky.T
        whiten = torch.linalg.solve_triangular(cholesky, (proposals - mean).T, upper=False).T
        whitened_centres = torch.linalg.solve_triangular(cholesky, (u - mean).T, upper=False).T
        log_kernel = torch.cat(
            [
                torch.logsumexp(-0.5 * torch.cdist(chunk, whitened_centres) ** 2, dim=1)
                for chunk in whiten.split(4096)
            ]
        )
        log_q = (
            log_kernel
            - math.log(num_centres)
            - cholesky.diagonal().log().sum()
            - 0.5 * u.shape[1] * math.log(2 * math.pi)
        )
        theta = transform(proposals)
        log_q = log_q - transform.log_abs_det_jacobian(proposals, theta)
        dtype = torch.get_default_dtype()
        with torch.no_grad(), pyro.validation_enabled(False):
            log_joint = torch.cat(
                [self.log_joint({"theta": t.to(dtype)}).double() for t in theta.split(4096)]
            )
        log_w = (log_joint - log_q).nan_to_num(-math.inf)
        w = (log_w - log_w.max()).exp()
        ess = float(w.sum() ** 2 / (w**2).sum())
        index = torch.multinomial(w / w.sum(), num_samples, replacement=True, generator=generator)
        return theta[index].to(dtype), held_out.to(dtype), ess

    def reference_samples(self, num_samples: int, seed: int = 0) -> dict[str, Tensor]:
        r"""Exact posterior draws where the task has an exact sampler (``exact = True``), else
        ``num_samples`` of sbibm's reference draws (:meth:`sbibm_samples`)."""
        if self.exact:
            return super().reference_samples(num_samples, seed)
        return self.sbibm_samples(num_samples, seed)

    def __repr__(self) -> str:
        if self.num_observation is not None:
            return f"{type(self).__name__}(observation={self.num_observation})"
        return f"{type(self).__name__}(observation={self.data['x'].reshape(-1).tolist()})"

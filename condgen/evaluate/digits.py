r"""Image inverse problems on scikit-learn's 8x8 digits, with a diffusion prior trained once
and cached on disk.

The data are the 1797 handwritten digits of :func:`sklearn.datasets.load_digits` (8x8
images, integer intensities 0 to 16), flattened to 64 pixels and scaled to
:math:`[-1, 1]` by :math:`x = v / 8 - 1` (background :math:`-1`, full ink :math:`+1`).
The split is fixed: the images whose index is a multiple of 5 (360) are the test split, the
other 1437 the training split. The prior, a :class:`~condgen.priors.DiffusionPrior`, sees the
training split only; the tasks observe a test digit.

scikit-learn is not a dependency of condgen: it is imported when the data are first needed,
and ``pip install scikit-learn`` provides it.

Example:
    The real prior is trained once, ``prepare_digits()`` (about 3 minutes on one CPU core);
    here a 20-step one, saved in the current folder, stands in for it (its draws are noise):

    >>> import condgen
    >>> from condgen.evaluate import DigitsInpainting, prepare_digits
    >>> path = prepare_digits(cache_dir=".", steps=20, progress=False)
    >>> task = DigitsInpainting(mask="half", noise=0.1, index=0, cache_dir=".")
    >>> post = condgen.condition(task.model, task.data, method="tds", steps=10, num_samples=100,
    ...                          progress=False)  # the defaults: 100 steps, 1000 draws
    >>> post.samples["x"].shape
    torch.Size([1, 100, 64])
    >>> task.plot({"tds": post}).savefig("digits.png")
"""

from __future__ import annotations

__all__ = [
    "CACHE_ENV",
    "DIGITS_STEPS",
    "DigitsDenoising",
    "DigitsInpainting",
    "digits_cache_path",
    "digits_data",
    "digits_prior",
    "prepare_digits",
]

import functools
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..conditioning import condition, seeded
from ..methods.tds import TDS
from ..posterior import Posterior, systematic_resample
from ..priors import MLP, DiffusionPrior, load, save_prior
from ..problem import Problem
from .tasks import Task, register_task

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CACHE_ENV = "CONDGEN_CACHE"
r"""The environment variable naming the cache folder (default ``~/.cache/condgen``)."""

DIGITS_STEPS = 15_000
r"""Training steps of the cached prior: about 3 minutes on one CPU core."""

_FILENAME = "digits-prior.pt"
_SIDE = 8
_PIXELS = _SIDE * _SIDE
_HIDDEN = (512, 512, 512)
_TEST_EVERY = 5


# ------------------------------------------------------------------------------------ data


@functools.lru_cache(maxsize=1)
def _load_sklearn_digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits tasks use scikit-learn's 8x8 digits, and scikit-learn is not "
            "installed: pip install scikit-learn"
        ) from error
    bunch = load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float32) / 8 - 1
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def digits_data(split: str = "train", *, labels: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    r"""The 8x8 digits of scikit-learn, flattened and scaled to :math:`[-1, 1]`.

    An intensity :math:`v \in \{0, \dots, 16\}` becomes :math:`x = v / 8 - 1`. The split is
    deterministic: image :math:`i` (in scikit-learn's order) is a test image when
    :math:`i \equiv 0 \pmod 5` (360 images) and a training image otherwise (1437 images).

    Arguments:
        split: ``"train"``, ``"test"`` or ``"all"`` (1797 images).
        labels: Whether to return the digit classes too.

    Returns:
        The images, shaped ``[N, 64]`` (row-major pixels), and with ``labels=True`` also
        their classes, shaped ``[N]``.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> from condgen.evaluate.digits import digits_data
        >>> digits_data("test").shape
        torch.Size([360, 64])
        >>> images, labels = digits_data("train", labels=True)
        >>> images.shape, labels.shape, float(images.min()), float(images.max())
        (torch.Size([1437, 64]), torch.Size([1437]), -1.0, 1.0)

    References:
        | Optical Recognition of Handwritten Digits (Alpaydin and Kaynak, 1998), UCI
        | https://doi.org/10.24432/C50P49
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, classes = _load_sklearn_digits()
    if split != "all":
        test = torch.arange(len(images)) % _TEST_EVERY == 0
        keep = test if split == "test" else ~test
        images, classes = images[keep], classes[keep]
    images, classes = images.clone(), classes.clone()
    return (images, classes) if labels else images


# ----------------------------------------------------------------------------------- prior


def digits_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    r"""The file of the cached digits prior: ``digits-prior.pt`` in ``cache_dir``, else in
    ``$CONDGEN_CACHE``, else in ``~/.cache/condgen``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "condgen"
    return Path(cache_dir).expanduser() / _FILENAME


def _train_command(cache_dir: str | os.PathLike | None) -> str:
    command = "condgen prepare digits"
    if cache_dir is not None:
        command += f" --cache-dir {os.fspath(cache_dir)}"
    return command


def prepare_digits(
    cache_dir: str | os.PathLike | None = None,
    steps: int = DIGITS_STEPS,
    progress: bool = True,
    seed: int = 0,
) -> Path:
    r"""Trains the diffusion prior of the digits tasks and saves it to the cache.

    The prior is a :class:`~condgen.priors.DiffusionPrior` on the variance-preserving path
    :math:`x_t = \alpha_t x + \sigma_t \epsilon` over the 64 pixels, whose denoiser
    :math:`D(x_t, t) \approx E[x \mid x_t]` is a residual :class:`~condgen.priors.MLP` with
    three hidden layers of 512 units (a :class:`~condgen.priors.UNet` over ``[1, 8, 8]``
    images costs ten times more per step on a CPU, too much to train in minutes). It is
    fitted to the training split of :func:`digits_data` by denoising score matching,

    .. math:: \min_D \; E_{t, x, \epsilon}\, w_t \|D(\alpha_t x + \sigma_t \epsilon, t)
        - x\|^2, \quad w_t = 1 + \min(\alpha_t^2 / \sigma_t^2, 100)

    (see :func:`~condgen.priors.training.fit_path_prior`; batches of 256, AdamW at
    :math:`10^{-3}`, EMA 0.999), with the weights initialised and the batches drawn from
    ``seed``, so that a seed gives the same prior on the same machine. The global random state
    is left as it was. With the default 15000 steps this takes about 3 minutes on one CPU core.
    The file replaces any previous one atomically; :func:`digits_prior` loads it.

    Arguments:
        cache_dir: The cache folder (see :func:`digits_cache_path`); created if missing.
        steps: The number of training steps.
        progress: Whether to show a progress bar.
        seed: The training seed.

    Returns:
        The path of the saved prior.

    Example:
        The real prior: ``prepare_digits()`` (the same as ``condgen prepare digits``), 15000
        steps, saved to ``~/.cache/condgen/digits-prior.pt``. A 20-step one in the current
        folder:

        >>> from condgen.evaluate import prepare_digits
        >>> path = prepare_digits(cache_dir=".", steps=20, progress=False)
        >>> path.name, path.exists()
        ('digits-prior.pt', True)

    References:
        | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
        | https://arxiv.org/abs/2006.11239
    """
    data = digits_data("train")
    path = digits_cache_path(cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = DiffusionPrior(
            MLP(_PIXELS, hidden=_HIDDEN), event_shape=(_PIXELS,), sampler="heun", steps=128
        )
        prior.fit(
            data,
            steps=steps,
            batch_size=256,
            lr=1e-3,
            ema=0.999,
            progress=progress,
            generator=torch.Generator().manual_seed(seed),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_prior(prior, path)
    return path


def digits_prior(
    cache_dir: str | os.PathLike | None = None,
    *,
    train: bool = False,
    steps: int = DIGITS_STEPS,
    progress: bool = True,
) -> DiffusionPrior:
    r"""The diffusion prior of the digits tasks, loaded from the cache.

    The prior (see :func:`prepare_digits`) is a distribution over flattened images in
    :math:`[-1, 1]^{64}`, shaped ``[64]``, trained on the training split of
    :func:`digits_data`. It is trained once, by ``condgen prepare digits`` (or
    :func:`prepare_digits`, or ``train=True`` here), and read from the cache afterwards.

    Its quality, measured with 360 draws (heun sampler, 128 steps) against the 360 test
    digits, beside a Gaussian with the training split's mean and covariance and beside 360
    training digits (the best any model of the data can do):

    ======================================  ======  ========  ===============
    measure                                 prior   Gaussian  training digits
    ======================================  ======  ========  ===============
    1-nearest-neighbour two-sample test     0.59    0.83      0.49
    digit classifier's mean confidence      0.82    0.53      0.87
    distance to the nearest training digit  1.95    3.60      (test: 2.12)
    ======================================  ======  ========  ===============

    The two-sample test is the leave-one-out accuracy of telling draws from test digits by
    their nearest neighbour (0.5: indistinguishable); the confidence is the mean top class
    probability of a logistic regression fitted to the training split (0.86 on test
    digits); the last row shows that the draws are new digits, not copies of training ones.
    The energy distance and the sliced Wasserstein distance to the test digits are at their
    sampling noise for the prior, the Gaussian and training digits alike (0.003 to 0.02 and
    0.07 to 0.08): in 64 dimensions they see the mean and covariance, which the Gaussian
    matches.

    Arguments:
        cache_dir: The cache folder (see :func:`digits_cache_path`).
        train: Whether to train and cache the prior when the cache holds none.
        steps: Training steps when it trains.
        progress: Whether to show a progress bar when it trains.

    Returns:
        The prior, on the CPU.

    Raises:
        FileNotFoundError: If the cache holds no prior and ``train`` is false; the message
            gives the command that trains it.
        ValueError: If the cached file is not a digits prior, or is damaged.

    Example:
        >>> from condgen.evaluate import digits_prior
        >>> # digits_prior() reads the cached prior; here one of 20 steps, not 15000, is trained
        >>> prior = digits_prior(cache_dir=".", train=True, steps=20, progress=False)
        >>> prior.sample((16,)).shape
        torch.Size([16, 64])
    """
    path = digits_cache_path(cache_dir)
    if not path.exists():
        if not train:
            raise FileNotFoundError(
                f"no digits prior at {path}: train it once (about 3 minutes on one CPU core) "
                f"with the command\n\n    {_train_command(cache_dir)}\n\nor in Python with "
                f"condgen.evaluate.digits.prepare_digits(), or digits_prior(train=True)"
            )
        prepare_digits(cache_dir, steps=steps, progress=progress)
    try:
        prior = load(path, map_location="cpu")
    except ValueError as error:
        raise ValueError(
            f"{error}; delete it and train it again with: {_train_command(cache_dir)}"
        ) from None
    if not isinstance(prior, DiffusionPrior) or tuple(prior.event_shape) != (_PIXELS,):
        raise ValueError(
            f"{path} holds a {type(prior).__name__} with event shape "
            f"{tuple(prior.event_shape)}, not a digits prior over 64 pixels; train one with: "
            f"{_train_command(cache_dir)}"
        )
    return prior


# ----------------------------------------------------------------------------------- tasks


def _as_mask(mask: str | Tensor) -> Tensor:
    r"""A mask name or tensor as booleans shaped ``[64]``, True where a pixel is observed."""
    if isinstance(mask, str):
        observed = torch.ones(_SIDE, _SIDE, dtype=torch.bool)
        if mask == "half":
            observed[_SIDE // 2 :] = False
        elif mask == "center":
            observed[2:6, 2:6] = False
        else:
            raise ValueError(f"unknown mask {mask!r}: use 'half', 'center' or a tensor")
        return observed.flatten()
    mask = torch.as_tensor(mask)
    if mask.shape not in ((_PIXELS,), (_SIDE, _SIDE)):
        raise ValueError(f"a mask tensor must be shaped [64] or [8, 8], got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("a mask tensor must hold booleans or 0/1 (1: observed)")
        mask = mask != 0
    if not bool(mask.any()):
        raise ValueError("the mask observes no pixel")
    return mask.flatten().clone()


class _DigitsTask(Task):
    r"""A test digit observed through :math:`y = A x + \sigma \epsilon`, with the digits
    prior; see :class:`DigitsInpainting` and :class:`DigitsDenoising`."""

    exact = False
    default_methods = ("tds", "dps", "pigdm")

    #: Settings of the reference long run (see :meth:`reference_samples`).
    reference_runs = 32
    reference_particles = 500
    reference_steps = 200

    def __init__(
        self,
        observed: Tensor,
        noise: float,
        index: int,
        cache_dir: str | os.PathLike | None,
        prior: DiffusionPrior | None,
        seed: int,
    ):
        if not noise > 0:
            raise ValueError(f"noise must be positive, got {noise}")
        test = digits_data("test")
        if not 0 <= index < len(test):
            raise ValueError(f"index must lie in [0, {len(test)}) (the test digits), got {index}")
        if prior is None:
            prior = digits_prior(cache_dir)
        if tuple(prior.event_shape) != (_PIXELS,):
            raise ValueError(
                f"the prior must be over flattened 8x8 images (event shape (64,)), got "
                f"{tuple(prior.event_shape)}"
            )
        self.prior, self.noise, self.index, self.seed = prior, float(noise), index, seed
        self.true_image = test[index]
        self.observed = observed
        self.pixels = observed.nonzero().squeeze(-1)
        self._identity = bool(observed.all())
        noise_draws = torch.randn(len(self.pixels), generator=torch.Generator().manual_seed(seed))
        self.data = {"y": self.true_image[self.pixels] + self.noise * noise_draws}
        self.reference_stats: dict[str, Any] = {}
        self._references: dict[tuple, Tensor] = {}

    @property
    def operator(self) -> Tensor:
        r"""The matrix :math:`A`, shaped ``[m, 64]``: the rows of the identity at the observed
        pixels."""
        return torch.eye(_PIXELS)[self.pixels]

    def model(self) -> None:
        r"""The Pyro model: ``x ~ prior`` (site ``"x"``, ``[64]``) and
        ``y ~ Normal(A x, noise).to_event(1)`` (site ``"y"``, ``[m]``)."""
        x = pyro.sample("x", self.prior)
        loc = x if self._identity else x.index_select(-1, self.pixels)
        pyro.sample("y", dist.Normal(loc, self.noise).to_event(1))

    def reference_samples(
        self,
        num_samples: int,
        seed: int = 0,
        *,
        runs: int | None = None,
        particles: int | None = None,
        steps: int | None = None,
        progress: bool = False,
    ) -> dict[str, Tensor]:
        r"""Approximate posterior draws from a long run of the twisted diffusion sampler.

        There is no exact sampler of a neural prior's posterior. The reference pools
        ``runs`` independent runs of :class:`~condgen.methods.TDS` with ``particles``
        particles and ``steps`` steps each (by default 32 runs x 500 particles x 200 steps,
        16 times the particles and twice the steps of a default TDS run of 1000 draws; about
        2 minutes on one CPU core): each run's weighted particles :math:`(x_i^{(r)},
        w_i^{(r)})`, normalised within the run, get the pooled weights :math:`w_i^{(r)} /
        R`, which are then resampled (systematically) to ``num_samples`` equally weighted
        draws. TDS is consistent as its particles grow; what is left is its Monte Carlo
        error, which pooling many independent runs averages, the bias of a finite number of
        particles per run, and the discretisation of the path. Many small runs beat a few
        large ones here: the particles of one run descend from few ancestors (it resamples
        dozens of times), so its draws are far less diverse than their number.

        How it was checked, with the cached prior on test digit 0: sliced 2-Wasserstein
        distances (SW) to 4000 reference draws from 1000 draws of each method with its
        default options (TDS also with 500 steps), and from 1000 draws of a reference of
        another seed (the floor: the reference's own error at that size), averaged over two
        reference seeds:

        ==================  =====  =======  =======  =====  =====
        task                floor  TDS 100  TDS 500  DPS    PiGDM
        ==================  =====  =======  =======  =====  =====
        inpainting, half    0.024  0.11     0.048    0.054  0.19
        inpainting, center  0.030  0.093    0.051    0.066  0.23
        denoising, 0.5      0.016  0.023    0.033    0.11   0.024
        ==================  =====  =======  =======  =====  =====

        Every method is further from the reference than another reference is, but on the
        denoising task TDS and PiGDM are within 1.5 times the floor: differences between
        methods below about 0.02 there, and 0.03 on inpainting, are within the reference's
        error. References with 500 instead of 200 steps and 2000 or 8000 particles per run
        agreed with this one to within the same floor (SW 0.010 to 0.017 between pooled
        references), so neither the steps nor the particles per run leave a visible bias.
        The pooled effective sample size of the final weights, and the cost, are recorded
        in :attr:`reference_stats`; draws repeat particles when ``num_samples`` exceeds it.

        Results are kept on the task, so a second call with the same arguments is free.

        Arguments:
            num_samples: The number of draws.
            seed: The seed; run :math:`r` uses ``1000 * seed + r``.
            runs: Independent runs :math:`R` (default :attr:`reference_runs`).
            particles: Particles per run (default :attr:`reference_particles`).
            steps: Steps per run (default :attr:`reference_steps`).
            progress: Whether to show the runs' progress bars.

        Returns:
            ``{"x": draws}``, shaped ``[num_samples, 64]``.

        References:
            | Practical and Asymptotically Exact Conditional Sampling in Diffusion Models
            | (Wu et al., 2023) https://arxiv.org/abs/2306.17775
        """
        runs = self.reference_runs if runs is None else runs
        particles = self.reference_particles if particles is None else particles
        steps = self.reference_steps if steps is None else steps
        if min(num_samples, runs, particles, steps) < 1:
            raise ValueError("num_samples, runs, particles and steps must be positive")
        key = (num_samples, seed, runs, particles, steps)
        if key not in self._references:
            start = time.perf_counter()
            draws, log_weights, ess = [], [], []
            with seeded(seed):  # tracing the model draws from the prior
                problem = Problem(self.model, self.data)
                for r in range(runs):
                    post = condition(
                        problem,
                        method=TDS(steps=steps),
                        num_samples=particles,
                        seed=1000 * seed + r,
                        progress=progress,
                    )
                    draws.append(post.samples["x"].flatten(0, 1))
                    log_weights.append(post.log_weights.flatten() - math.log(runs))
                    ess.append(post.stats["ess"])
                pooled = torch.cat(log_weights)
                index = systematic_resample(pooled, num_samples)
            self._references[key] = torch.cat(draws)[index]
            self.reference_stats = {
                "runs": runs,
                "particles": particles,
                "steps": steps,
                "ess": float(1 / pooled.softmax(0).pow(2).sum()),
                "run_ess": ess,
                "time_s": time.perf_counter() - start,
            }
        return {"x": self._references[key].clone()}

    def observation_image(self) -> Tensor:
        r"""The observation as an 8x8 image, NaN at the unobserved pixels."""
        image = torch.full((_PIXELS,), math.nan)
        image[self.pixels] = self.data["y"]
        return image.reshape(_SIDE, _SIDE)

    def plot(
        self,
        posteriors: Mapping[str, Posterior],
        num: int = 8,
        *,
        reference: Tensor | None = None,
    ) -> Figure:
        r"""Pictures of the truth, the observation and draws of each method.

        The first row shows the clean digit and the observation (unobserved pixels in
        blue-grey); each further row is one method: the mean of its draws (weighted for
        weighted posteriors), then ``num`` draws (resampled when weighted). Pixels are drawn
        in grey levels from white (:math:`-1`, background) to black (:math:`+1`, ink).

        Arguments:
            posteriors: Posteriors of this task's model, by label.
            num: Draws shown per method.
            reference: Optional reference draws ``[N, 64]``, shown as a row above the
                methods.

        Returns:
            The matplotlib figure (save it with ``fig.savefig(path)``).

        Example:
            >>> import condgen
            >>> from condgen.evaluate import DigitsDenoising
            >>> from condgen.priors import MLP, DiffusionPrior
            >>> # an untrained stand-in for the cached prior (prepare_digits), to run in a second
            >>> prior = DiffusionPrior(MLP(64, hidden=(64, 64)), event_shape=(64,), steps=8)
            >>> task = DigitsDenoising(noise=0.5, index=0, prior=prior)
            >>> post = condgen.condition(task.model, task.data, method="dps", steps=10,
            ...                          num_samples=50, progress=False)
            >>> fig = task.plot({"dps": post}, num=6)
            >>> fig.savefig("dps.png")
        """
        import matplotlib.pyplot as plt

        rows: list[tuple[str, Tensor, Tensor]] = []
        if reference is not None:
            reference = reference.reshape(len(reference), -1)
            rows.append(("reference", reference.mean(0), reference))
        for label, posterior in posteriors.items():
            mean, _ = posterior.moments("x")
            rows.append((label, mean.reshape(-1), posterior.resample().flatten()["x"]))
        cols = num + 1
        fig, axes = plt.subplots(
            1 + len(rows), cols, figsize=(0.95 * cols, 1.05 * (1 + len(rows))), squeeze=False
        )
        cmap = plt.get_cmap("gray_r").with_extremes(bad="lightsteelblue")

        def show(ax, image: Tensor, title: str = "") -> None:
            image = image.detach().reshape(_SIDE, _SIDE).double().cpu().numpy()
            ax.imshow(image, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
            if title:
                ax.set_title(title, fontsize=8)

        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        show(axes[0, 0], self.true_image, "truth")
        show(axes[0, 1], self.observation_image(), "observed")
        for ax in axes[0, 2:]:
            ax.axis("off")
        generator = torch.Generator().manual_seed(0)
        for row, (label, mean, draws) in enumerate(rows, start=1):
            show(axes[row, 0], mean, "mean" if row == 1 else "")
            axes[row, 0].set_ylabel(label, fontsize=8)
            chosen = torch.randperm(len(draws), generator=generator)[:num]
            for col in range(num):
                if col < len(chosen):
                    show(axes[row, col + 1], draws[chosen[col]])
                else:
                    axes[row, col + 1].axis("off")
        fig.suptitle(f"{self.name}: test digit {self.index}", fontsize=9)
        fig.tight_layout()
        return fig


class DigitsInpainting(_DigitsTask):
    r"""Inpainting of a held-out 8x8 digit under a diffusion prior.

    .. math:: x \sim p_\theta(x), \quad y \mid x \sim \mathcal{N}(A x, \sigma^2 I_m),

    where :math:`p_\theta` is the cached digits prior (see :func:`digits_prior`) over
    :math:`x \in [-1, 1]^{64}`, and :math:`A \in \{0, 1\}^{m \times 64}` keeps the :math:`m`
    observed pixels. The truth is test digit ``index`` (see :func:`digits_data`), and the
    observation :math:`y = A x^\star + \sigma \epsilon` is drawn with ``seed``. The posterior
    has no closed form; :meth:`reference_samples` gives approximate draws from a long run of
    TDS.

    Arguments:
        mask: ``"half"`` (the top four rows observed, the bottom half to fill in: the
            posterior can hold several digits), ``"center"`` (the central 4x4 block hidden),
            or booleans shaped ``[64]`` or ``[8, 8]``, True where a pixel is observed.
        noise: The observation noise :math:`\sigma`, in the units of the scaled pixels
            (0.1 is 0.8 intensity levels of 16).
        index: Which test digit is the truth.
        cache_dir: The cache folder of the prior.
        prior: A prior to use instead of the cached one (e.g. a small one in tests).
        seed: Seed of the observation noise.

    Attributes:
        true_image: The clean digit, shaped ``[64]``.
        observed: Booleans shaped ``[64]``, True at the observed pixels.
        pixels: The indices of the observed pixels, shaped ``[m]``.
        reference_stats: Cost and effective sample size of the last reference run.

    Example:
        >>> import condgen
        >>> from condgen.evaluate import DigitsInpainting
        >>> from condgen.priors import MLP, DiffusionPrior
        >>> # an untrained stand-in for the cached prior (prepare_digits), to run in a second
        >>> prior = DiffusionPrior(MLP(64, hidden=(64, 64)), event_shape=(64,), steps=8)
        >>> task = DigitsInpainting(mask="center", noise=0.1, index=3, prior=prior)
        >>> int(task.observed.sum()), task.data["y"].shape  # the pixels around the centre
        (48, torch.Size([48]))
        >>> post = condgen.condition(task.model, task.data, method="pigdm", steps=10,
        ...                          num_samples=50, progress=False)  # e.g. 500 draws
        >>> task.plot({"pigdm": post}).savefig("center.png")

    References:
        | Practical and Asymptotically Exact Conditional Sampling in Diffusion Models
        | (Wu et al., 2023) https://arxiv.org/abs/2306.17775
    """

    name = "digits-inpainting"
    description = (
        "fill in a held-out 8x8 digit under a trained diffusion prior; approximate TDS "
        "reference (options mask, noise, index)"
    )

    def __init__(
        self,
        mask: str | Tensor = "half",
        noise: float = 0.1,
        index: int = 0,
        cache_dir: str | os.PathLike | None = None,
        prior: DiffusionPrior | None = None,
        seed: int = 0,
    ):
        self.mask = mask if isinstance(mask, str) else "custom"
        super().__init__(_as_mask(mask), noise, index, cache_dir, prior, seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask={self.mask!r}, noise={self.noise}, index={self.index})"


class DigitsDenoising(_DigitsTask):
    r"""Denoising of a held-out 8x8 digit under a diffusion prior.

    .. math:: x \sim p_\theta(x), \quad y \mid x \sim \mathcal{N}(x, \sigma^2 I_{64}),

    where :math:`p_\theta` is the cached digits prior (see :func:`digits_prior`) over
    :math:`x \in [-1, 1]^{64}`. The truth is test digit ``index`` (see :func:`digits_data`),
    and the observation :math:`y = x^\star + \sigma \epsilon` is drawn with ``seed``. The
    posterior has no closed form; :meth:`reference_samples` gives approximate draws from a
    long run of TDS.

    Arguments:
        noise: The observation noise :math:`\sigma`, in the units of the scaled pixels
            (0.5 is a quarter of the range).
        index: Which test digit is the truth.
        cache_dir: The cache folder of the prior.
        prior: A prior to use instead of the cached one (e.g. a small one in tests).
        seed: Seed of the observation noise.

    Attributes:
        true_image: The clean digit, shaped ``[64]``.
        reference_stats: Cost and effective sample size of the last reference run.

    Example:
        >>> import condgen
        >>> from condgen.evaluate import DigitsDenoising
        >>> from condgen.priors import MLP, DiffusionPrior
        >>> # an untrained stand-in for the cached prior (prepare_digits), to run in a second
        >>> prior = DiffusionPrior(MLP(64, hidden=(64, 64)), event_shape=(64,), steps=8)
        >>> task = DigitsDenoising(noise=0.5, index=0, prior=prior)
        >>> task.data["y"].shape  # every pixel, noisy
        torch.Size([64])
        >>> post = condgen.condition(task.model, task.data, method="dps", steps=10,
        ...                          num_samples=50, progress=False)  # e.g. 500 draws
        >>> task.plot({"dps": post}).savefig("denoised.png")

    References:
        | Practical and Asymptotically Exact Conditional Sampling in Diffusion Models
        | (Wu et al., 2023) https://arxiv.org/abs/2306.17775
    """

    name = "digits-denoising"
    description = (
        "denoise a held-out 8x8 digit under a trained diffusion prior; approximate TDS "
        "reference (options noise, index)"
    )

    def __init__(
        self,
        noise: float = 0.5,
        index: int = 0,
        cache_dir: str | os.PathLike | None = None,
        prior: DiffusionPrior | None = None,
        seed: int = 0,
    ):
        super().__init__(
            torch.ones(_PIXELS, dtype=torch.bool), noise, index, cache_dir, prior, seed
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise={self.noise}, index={self.index})"


register_task("digits-inpainting", DigitsInpainting)
register_task("digits-denoising", DigitsDenoising)

r"""A diffusers UNet trained on the 8x8 digits, shipped with condgen: a diffusion prior over
``[1, 8, 8]`` images for the tests and examples of :meth:`DiffusionPrior.from_diffusers
<condgen.priors.DiffusionPrior.from_diffusers>` (needs ``pip install condgen[diffusers]``)."""

from __future__ import annotations

__all__ = ["DIGITS_UNET", "digits_unet_prior"]

import os
from pathlib import Path

from ...priors import DiffusionPrior, load
from ...priors.diffusers import DiffusersDenoiser

DIGITS_UNET = Path(__file__).with_name("digits-unet.pt")
r"""The shipped file of :func:`digits_unet_prior` (written by
``benchmarks/diffusers_digits.py``)."""


def digits_unet_prior(path: str | os.PathLike | None = None) -> DiffusionPrior:
    r"""A diffusers ``UNet2DModel`` trained on the training split of
    :func:`~condgen.evaluate.digits.digits_data`, as a prior over ``[1, 8, 8]`` images in
    :math:`[-1, 1]` (:meth:`~condgen.priors.DiffusionPrior.from_diffusers`).

    The UNet (block channels (8, 16), one ResNet block per resolution, attention in the
    middle block; 41,609 parameters) predicts the noise :math:`\epsilon` of
    :math:`x_\tau = \sqrt{\bar\alpha_\tau} x + \sqrt{1 - \bar\alpha_\tau} \epsilon` under
    diffusers' default ``DDPMScheduler`` (1000 timesteps, linear :math:`\beta` from
    :math:`10^{-4}` to 0.02). It was trained with diffusers' DDPM recipe, the mean squared
    error of the predicted noise at uniform timesteps, by ``benchmarks/diffusers_digits.py``,
    whose report (docs/benchmarks.md, "diffusers UNet on the digits") measures condgen's
    DDPM draws of it against diffusers' ``DDPMPipeline``. Its default sampler is ``"ddpm"``
    with 100 steps; build the pipeline's scheduler with
    ``diffusers.DDPMScheduler(clip_sample=False)`` (condgen does not clip) and take the UNet
    from ``prior.network.unet``.

    Arguments:
        path: The prior file; by default the shipped one, :data:`DIGITS_UNET`.

    Returns:
        The prior, on the CPU, its UNet in evaluation mode.

    Raises:
        ImportError: Without diffusers (``pip install condgen[diffusers]``).
        FileNotFoundError: If the file is missing.
        ValueError: If the file does not hold a diffusers prior over ``[1, 8, 8]`` images.

    Example:
        >>> from condgen.evaluate.digits import digits_unet_prior  # doctest: +SKIP
        >>> prior = digits_unet_prior()  # doctest: +SKIP
        >>> prior.sample((16,), steps=50).shape  # doctest: +SKIP
        torch.Size([16, 1, 8, 8])

    References:
        | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
        | https://arxiv.org/abs/2006.11239
    """
    path = DIGITS_UNET if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no digits UNet prior at {path}: the shipped file is missing from this install; "
            "write it with python benchmarks/diffusers_digits.py"
        )
    prior = load(path, map_location="cpu")
    if not (
        isinstance(prior, DiffusionPrior)
        and isinstance(prior.network, DiffusersDenoiser)
        and tuple(prior.event_shape) == (1, 8, 8)
    ):
        raise ValueError(
            f"{path} holds a {type(prior).__name__} with event shape "
            f"{tuple(prior.event_shape)}, not a diffusers prior over [1, 8, 8] digit images"
        )
    return prior

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
    torch.Size([4, 25, 64])
    >>> task.plot({"tds": post}).savefig("digits.png")
"""

from __future__ import annotations

__all__ = [
    "CACHE_ENV",
    "DIGITS_STEPS",
    "DIGITS_UNET",
    "DigitsDenoising",
    "DigitsInpainting",
    "digits_cache_path",
    "digits_data",
    "digits_prior",
    "digits_unet_prior",
    "prepare_digits",
]

from .data import (
    CACHE_ENV,
    DIGITS_STEPS,
    digits_cache_path,
    digits_data,
    digits_prior,
    prepare_digits,
)
from .tasks import DigitsDenoising, DigitsInpainting
from .unet import DIGITS_UNET, digits_unet_prior

r"""Saving and loading of the amortized estimators, through condgen's one file format."""

from __future__ import annotations

__all__ = ["load_estimator", "save_estimator"]

import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from .._format import check_plain, read, write
from ..problem import Site


class _Estimator(Protocol):
    r"""What saving needs of an estimator (:class:`~condgen.amortized.PosteriorEstimator` has
    it; this module does not import the estimators, which call it)."""

    label: ClassVar[str]
    version: ClassVar[int]
    observed: tuple[str, ...]
    latent_sites: dict[str, Site]
    observed_sites: dict[str, Site]
    embedding: nn.Module | None
    training_losses: list[float]
    validation_losses: list[float]
    x_o: dict[str, Tensor] | None
    sequential_rounds: list[dict[str, Any]]

    def __init__(self, model: Callable, observed: Any, **options: Any) -> None: ...
    def _network_config(self) -> dict[str, Any]: ...
    @classmethod
    def _network_options(cls, config: Mapping[str, Any]) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any: ...


def _format(cls: type[_Estimator]) -> str:
    return f"condgen-{cls.label.lower()}"


def _config(estimator: _Estimator) -> dict[str, Any]:
    embedding = estimator.embedding
    config = {
        "observed": list(estimator.observed),
        **estimator._network_config(),
        "latent_sites": {n: list(s.shape) for n, s in estimator.latent_sites.items()},
        "observed_sites": {n: list(s.shape) for n, s in estimator.observed_sites.items()},
        "embedding": None
        if embedding is None
        else f"{type(embedding).__module__}.{type(embedding).__qualname__}",
        "training_losses": list(estimator.training_losses),
        "validation_losses": list(estimator.validation_losses),
        "x_o": None
        if estimator.x_o is None
        else {n: v.tolist() for n, v in estimator.x_o.items()},
        "sequential_rounds": [dict(r) for r in estimator.sequential_rounds],
    }
    check_plain(config, f"the {estimator.label} configuration")
    return config


def save_estimator(estimator: _Estimator, path: str | os.PathLike) -> None:
    r"""Writes ``estimator`` to ``path`` with :func:`condgen._format.write`; see
    :meth:`~condgen.amortized.PosteriorEstimator.save`."""
    config = _config(estimator)
    write(path, _format(type(estimator)), estimator.version, config, estimator.state_dict())


def load_estimator(
    cls: type[_Estimator],
    path: str | os.PathLike,
    model: Callable,
    embedding: nn.Module | None,
    args: tuple,
    kwargs: Mapping[str, Any] | None,
    map_location: str | torch.device | None,
) -> _Estimator:
    r"""Reads an estimator of class ``cls`` for ``model`` with :func:`condgen._format.read`;
    see :meth:`~condgen.amortized.PosteriorEstimator.load`."""
    path, label = os.fspath(path), cls.label
    what, hint = f"condgen {label} file", f"{label.lower()}.save(path)"
    document = read(path, _format(cls), cls.version, what, hint, map_location)
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
    x_o = config.get("x_o")
    if x_o is not None:
        estimator.x_o = {
            n: torch.tensor(v, dtype=estimator.latent_loc.dtype) for n, v in x_o.items()
        }
    estimator.sequential_rounds = [dict(r) for r in config.get("sequential_rounds", [])]
    return estimator

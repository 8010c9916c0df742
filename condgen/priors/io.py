r"""Saving and loading priors without pickling code.

A prior file is written by :func:`torch.save` and holds only plain data and tensors:

.. code-block:: python

    {
        "format": "condgen-prior",
        "version": 1,
        "class": "DiffusionPrior",  # the prior's class name
        "config": {...},  # constructor arguments: str, int, float, bool, None, lists, dicts
        "state_dict": {...},  # tensors: the network's weights, a bound context, ...
    }

:func:`load` reads it with ``torch.load(weights_only=True)``, which refuses any pickled
class or function, and rebuilds the prior from its configuration: schedules through
:meth:`Schedule.config` and :func:`~condgen.priors.schedules.build_schedule`, networks of
:mod:`condgen.priors.nets` through their ``config`` and the registry
:data:`~condgen.priors.nets.NETS`, zuko flows made by :meth:`FlowPrior.build` through
their configuration. A network condgen cannot rebuild (a user's own module) is saved as
weights only, and loading needs an instance of it: ``load(path, network=module)``.

Example:
    >>> import condgen, torch
    >>> from condgen.priors import MLP, DiffusionPrior
    >>> prior = DiffusionPrior(MLP(2, hidden=(16, 16)), event_shape=(2,))
    >>> prior.save("prior.pt")
    >>> type(condgen.priors.load("prior.pt")).__name__
    'DiffusionPrior'

    A network of one's own is saved as weights only, and loading needs an instance of it:

    >>> class MyNet(torch.nn.Module):
    ...     def __init__(self, features):
    ...         super().__init__()
    ...         self.linear = torch.nn.Linear(features + 1, features)
    ...     def forward(self, x_t, t):
    ...         return self.linear(torch.cat([x_t, t.expand(x_t.shape[:-1]).unsqueeze(-1)], -1))
    >>> DiffusionPrior(MyNet(2), event_shape=(2,)).save("custom.pt")
    >>> prior = condgen.priors.load("custom.pt", network=MyNet(2))
    >>> prior.sample((4,), steps=4).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

__all__ = ["FORMAT", "VERSION", "load", "save_prior"]

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._format import read
from .base import FORMAT, VERSION, Prior
from .diffusers import denoiser_from_config
from .flow import FLOW_CLASSES, FlowPrior, flow_from_config
from .mixture import GaussianMixturePrior
from .nets import NETS
from .path import DiffusionPrior, FlowMatchingPrior, PathPrior
from .schedules import build_schedule

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------ plain data


def _unprefixed(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    n = len(prefix) + 1
    return {key[n:]: value for key, value in state.items() if key.startswith(prefix + ".")}


# -------------------------------------------------------------------------------- networks


def _rebuild_module(
    entry: Mapping[str, Any],
    state: dict[str, Tensor],
    network: Any,
    build: Callable[[str, dict[str, Any]], Any],
    path: str,
) -> Any:
    r"""The network of a saved prior: ``network`` if given, else rebuilt by ``build`` from
    its registry name and configuration; the saved weights are then assigned to it."""
    if network is None:
        if entry.get("name") is None:
            raise ValueError(
                f"{path} holds the weights of a network that condgen cannot rebuild "
                f"({entry.get('class')}): pass an instance to load them into, "
                f"condgen.priors.load(path, network=...)"
            )
        network = build(entry["name"], dict(entry["config"]))
    if isinstance(network, nn.Module):
        try:
            network.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise ValueError(
                f"the network ({type(network).__name__}) does not match the weights saved in "
                f"{path}: {error}"
            ) from None
    elif state:
        raise ValueError(
            f"{path} holds network weights, but the network given is not an nn.Module"
        )
    return network


def _build_net(name: str, config: dict[str, Any]) -> nn.Module:
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; known networks are {sorted(NETS)}")
    return NETS[name](**config)


def _build_flow(name: str, config: dict[str, Any]) -> nn.Module:
    if name not in FLOW_CLASSES:
        raise ValueError(f"unknown flow {name!r}; known flows are {sorted(FLOW_CLASSES)}")
    return flow_from_config({**config, "flow": name})


# ---------------------------------------------------------------------- priors to and from


def _decode_mixture(config: dict, state: dict, network: Any, path: str) -> GaussianMixturePrior:
    prior = GaussianMixturePrior(
        state["weights"],
        state["means"],
        state["covs"],
        schedule=build_schedule(config["schedule"]),
        sampler=config["sampler"],
        steps=config["steps"],
    )
    prior.exact_divergence = config["exact_divergence"]
    return prior


def _decode_path(config: dict, state: dict, network: Any, path: str, cls: type) -> PathPrior:
    entry, weights = config["network"], _unprefixed("network", state)
    if entry.get("name") == "diffusers":  # the UNet and the schedule of a diffusers prior
        try:
            net = denoiser_from_config(entry, weights, network)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        return cls(
            net,
            net.schedule,
            tuple(config["event_shape"]),
            prediction=config["prediction"],
            context=state.get("context"),
            sampler=config["sampler"],
            steps=config["steps"],
            exact_divergence=config["exact_divergence"],
        )
    net = _rebuild_module(entry, weights, network, _build_net, path)
    options = {
        "event_shape": tuple(config["event_shape"]),
        "context": state.get("context"),
        "sampler": config["sampler"],
        "steps": config["steps"],
        "exact_divergence": config["exact_divergence"],
    }
    if cls is DiffusionPrior:
        options["schedule"] = build_schedule(config["schedule"])
        options["prediction"] = config["prediction"]
    return cls(net, **options)


def _decode_flow(config: dict, state: dict, network: Any, path: str) -> FlowPrior:
    flow = _rebuild_module(config["flow"], _unprefixed("flow", state), network, _build_flow, path)
    return FlowPrior(flow, context=state.get("context"), event_shape=config["event_shape"])


_DECODERS: dict[str, Callable[[dict, dict, Any, str], Prior]] = {
    "GaussianMixturePrior": _decode_mixture,
    "DiffusionPrior": lambda *args: _decode_path(*args, cls=DiffusionPrior),
    "FlowMatchingPrior": lambda *args: _decode_path(*args, cls=FlowMatchingPrior),
    "FlowPrior": _decode_flow,
}


# ------------------------------------------------------------------------------ save, load


def save_prior(prior: Prior, path: PathLike) -> None:
    r"""Saves a prior to a file that :func:`load` reads back, atomically: the file is written
    next to ``path`` under a temporary name, then renamed, so that ``path`` always holds
    either the old file or the complete new one. Temporary files that earlier saves of
    ``path`` left behind when their process was killed are removed first.

    Arguments:
        prior: A :class:`GaussianMixturePrior`, :class:`DiffusionPrior`,
            :class:`FlowMatchingPrior` or :class:`FlowPrior` (a bound context is saved too).
        path: The file to write.

    Raises:
        TypeError: For other priors, custom schedules, or configurations that are not plain
            data.

    Example:
        >>> import torch
        >>> from condgen.priors import GaussianMixturePrior, save_prior
        >>> covs = 0.1 * torch.eye(2).expand(2, 2, 2)
        >>> prior = GaussianMixturePrior(torch.ones(2), torch.eye(2), covs)
        >>> save_prior(prior, "prior.pt")  # the same as prior.save("prior.pt")
    """
    if not isinstance(prior, Prior):
        raise TypeError(f"cannot save a {type(prior).__name__}: it is not a condgen prior")
    prior.save(path)


def load(
    path: PathLike,
    network: nn.Module | Callable | None = None,
    map_location: str | torch.device | None = None,
) -> Prior:
    r"""Loads a prior saved by :meth:`Prior.save` (or :func:`save_prior`).

    The file is read with ``torch.load(weights_only=True)``: it can hold tensors and plain
    data only, so loading never runs code from the file. Its zip members are checked against
    their CRC-32 checksums first, so that a damaged file is refused rather than loaded with
    wrong weights. The weights are assigned to the
    network as saved (same dtype; device per ``map_location``).

    Arguments:
        path: The file.
        network: The network (or zuko flow) to load the saved weights into; required when the
            prior's network is not one condgen can rebuild from its configuration (a user's
            own module), else it replaces the rebuilt one.
        map_location: Where to put the tensors, as in :func:`torch.load`, e.g. ``"cpu"``.

    Returns:
        The prior, of the saved class.

    Raises:
        ValueError: If the file is not a condgen prior file (another torch file, a text
            file, a pickle of other objects), is truncated or corrupted, was written by a
            newer format version, names an unknown class, or needs ``network``.

    Example:
        >>> import condgen, torch
        >>> from condgen.priors import GaussianMixturePrior
        >>> covs = 0.1 * torch.eye(2).expand(2, 2, 2)
        >>> GaussianMixturePrior(torch.ones(2), torch.eye(2), covs).save("prior.pt")
        >>> prior = condgen.priors.load("prior.pt", map_location="cpu")
        >>> prior.means
        tensor([[1., 0.],
                [0., 1.]])
    """
    path = os.fspath(path)
    document = read(path, FORMAT, VERSION, "condgen prior file", "prior.save(path)", map_location)
    name = document.get("class")
    if name not in _DECODERS:
        raise ValueError(
            f"{path} holds an unknown prior class {name!r}; known classes are {sorted(_DECODERS)}"
        )
    config, state = document["config"], document["state_dict"]
    try:
        return _DECODERS[name](config, state, network, path)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(
            f"{path} is malformed: its {name} entry is incomplete or invalid "
            f"({type(error).__name__}: {error})"
        ) from None

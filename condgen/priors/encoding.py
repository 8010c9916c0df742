r"""The pieces that turn a prior into plain configuration and tensors for the file format of
:mod:`condgen._format` (each saveable prior class encodes itself with them; :mod:`.io` decodes)."""

from __future__ import annotations

__all__ = ["context_state", "module_entry", "network_config", "prefixed", "schedule_config"]

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .._format import check_plain
from .nets import NETS
from .schedules import SCHEDULES, Schedule


def schedule_config(schedule: Schedule) -> dict[str, Any]:
    r"""The configuration of one of condgen's schedules, which loading rebuilds.

    Raises:
        TypeError: For a schedule of another class.
    """
    name = type(schedule).__name__
    if SCHEDULES.get(name) is not type(schedule):
        raise TypeError(
            f"cannot save the schedule {schedule!r}: only condgen's schedules "
            f"{sorted(SCHEDULES)} can be rebuilt when loading"
        )
    return schedule.config()


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def prefixed(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    r"""``state`` with every key under ``prefix.``."""
    return {f"{prefix}.{key}": value for key, value in state.items()}


def module_entry(
    module: Any, registry: Mapping[str, Any], config: dict[str, Any] | None, key: str
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    r"""The saved description of a network (or flow) and its weights: the registry name and
    configuration when ``registry[key]`` rebuilds it, else its class name only."""
    state = module.state_dict() if isinstance(module, nn.Module) else {}
    if config is not None and registry.get(key) is type(module):
        check_plain(config, f"the configuration of {type(module).__name__}")
        return {"name": key, "config": config}, dict(state)
    return {"name": None, "class": _qualname(module)}, dict(state)


def context_state(prior: Any) -> dict[str, Tensor]:
    r"""A bound context of a conditional prior, as a tensor entry (none without one)."""
    context = getattr(prior, "context", None)
    return {} if context is None else {"context": context.detach().clone()}


def network_config(prior: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    r"""The configuration and tensors that every path prior with a network saves: its event
    shape, sampler options, network entry (:func:`module_entry`), weights and context."""
    net = prior.network
    entry, weights = module_entry(net, NETS, getattr(net, "config", None), type(net).__name__)
    config = {
        "event_shape": list(prior.event_shape),
        "sampler": prior.sampler,
        "steps": prior.steps,
        "exact_divergence": prior.exact_divergence,
        "network": entry,
    }
    return config, {**prefixed("network", weights), **context_state(prior)}

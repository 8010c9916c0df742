r"""The common part of the amortized guides: a model's data plate, its local latents and
observations, and the guide that declares the plate as the model does."""

from __future__ import annotations

__all__: list[str] = []

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide, AutoNormal
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor
from torch.distributions import Distribution, biject_to


class _PlateFound(Exception):
    r"""Raised by :class:`_PlateProbe` with the message of the plate's subsample site."""

    def __init__(self, msg: dict):
        super().__init__(msg["name"])
        self.msg = msg


class _PlateProbe(Messenger):
    r"""Stops a model at the declaration of the plate ``name``, to read its size, subsample
    size and subsample indices without running the rest of the model."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name and site_is_subsample(msg):
            raise _PlateFound(msg)


_PLATE_OPTIONS = ("local", "plate", "data", "observations", "global_guide")
r"""The keyword arguments of the data plate, which every amortized guide passes on to
:class:`_AmortizedGuide` (with ``init_loc_fn``, whose default is each guide's own)."""


class _AmortizedGuide(AutoGuide):
    r"""The common part of the amortized guides: finding the data plate, its local latents and
    observations, the non-amortized guide of the global latents, and the local sites'
    unconstrained vector. Subclasses give :meth:`_local_posterior`. The arguments are
    :class:`~condgen.guides.AmortizedNormal`'s.
    """

    def __init__(
        self,
        model: Callable,
        encoder: Callable,
        *,
        local: Sequence[str] | None = None,
        plate: str | None = None,
        data: Mapping[str, Tensor] | None = None,
        observations: Callable[..., Tensor | Sequence[Tensor]] | None = None,
        global_guide: Callable[[Callable], Callable] | None = None,
        init_loc_fn: Callable = init_to_feasible,
    ):
        self._data = {k: torch.as_tensor(v) for k, v in (data or {}).items()}
        if self._data:
            model = poutine.condition(model, data=self._data)
        self._plain_model = model
        super().__init__(InitMessenger(init_loc_fn)(model))
        self.encoder = encoder
        self._local_names = None if local is None else list(local)
        self._plate_name = plate
        self._observations = observations
        self._global_guide_factory = global_guide
        self._init_loc_fn = init_loc_fn

    # ------------------------------------------------------------------------- structure

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        trace = poutine.block(poutine.trace(self.model).get_trace)(*args, **kwargs)
        frame = self._find_plate(trace)
        indices = (
            trace.nodes[frame.name]["value"]
            if frame.name in trace.nodes
            else torch.arange(frame.size)
        )
        trace = prune_subsample_sites(trace)
        self.prototype_trace = trace
        latent = [n for n, s in trace.iter_stochastic_nodes()]
        in_plate = [n for n in latent if _in_frame(trace.nodes[n], frame.name)]
        local = in_plate if self._local_names is None else self._local_names
        for name in local:
            if name not in in_plate:
                raise ValueError(
                    f"local site '{name}' is not a latent site inside plate '{frame.name}'; "
                    f"those are {in_plate}"
                )
        if not local:
            raise ValueError(f"no latent site inside plate '{frame.name}' to amortize")
        self._frame = frame
        self._local_names = list(local)
        self._global_names = [n for n in latent if n not in local]
        self._prototype_frames = {}
        for name in latent:
            for f in trace.nodes[name]["cond_indep_stack"]:
                if not f.vectorized:
                    raise NotImplementedError(f"{type(self).__name__} needs vectorised plates")
                self._prototype_frames[f.name] = f

        # local sites: the per-datum unconstrained shapes, packed into one vector per datum
        self._local_shapes, init = {}, []
        for name in self._local_names:
            site = trace.nodes[name]
            value = site["value"].detach()
            axis = _datum_axis(site, frame, value)
            unconstrained = biject_to(site["fn"].support).inv(value)
            self._local_shapes[name] = unconstrained.shape[axis + 1 :]
            init.append(unconstrained.reshape(value.shape[axis], -1))
        self.local_dim = sum(math.prod(s) for s in self._local_shapes.values())
        self._local_init = torch.cat(init, -1).mean(0)

        # observations inside the plate, and where to read them at each call
        self._observed_names = [
            n
            for n, s in trace.nodes.items()
            if s["type"] == "sample" and s["is_observed"] and _in_frame(s, frame.name)
        ]
        if not self._observed_names:
            raise ValueError(f"no observed site inside plate '{frame.name}'")
        batches = []
        for name in self._observed_names:
            site = trace.nodes[name]
            value = site["value"].expand(site["fn"].batch_shape + site["fn"].event_shape)
            axis = _datum_axis(site, frame, value)
            batches.append(value.reshape(value.shape[axis:]))
        self._sources = self._find_sources(batches, indices, frame, args, kwargs)
        self._setup_local(*self._batch(indices, args, kwargs))

        if self._global_names:
            factory = self._global_guide_factory or self._default_global_guide
            self.global_guide = factory(poutine.block(self._plain_model, hide=self._local_names))
        else:
            self.global_guide = None

    def _find_plate(self, trace: poutine.Trace):
        sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
        frames = {f.name: f for s in sites for f in s["cond_indep_stack"]}
        if self._plate_name is not None:
            if self._plate_name not in frames:
                raise ValueError(
                    f"the model has no plate '{self._plate_name}'; its plates are {sorted(frames)}"
                )
            return frames[self._plate_name]
        observed = {
            f.name
            for s in sites
            if s["is_observed"] and not site_is_subsample(s)
            for f in s["cond_indep_stack"]
        }
        latent = {
            f.name
            for s in sites
            if not s["is_observed"] and not site_is_subsample(s)
            for f in s["cond_indep_stack"]
        }
        shared = sorted(observed & latent)
        if len(shared) > 1:
            subsampled = [n for n in shared if frames[n].full_size not in (None, frames[n].size)]
            shared = subsampled if len(subsampled) == 1 else shared
        if len(shared) != 1:
            raise ValueError(
                "cannot tell the data plate: the plates holding both observed and latent sites "
                f"are {shared}; pass plate='name'"
            )
        return frames[shared[0]]

    def _find_sources(
        self, batches: list[Tensor], indices: Tensor, frame, args: tuple, kwargs: dict
    ) -> list:
        full = frame.full_size or frame.size
        if self._observations is not None:
            found = _as_tuple(self._observations(*args, **kwargs))
            if len(found) != len(batches) or any(x.shape[0] != full for x in found):
                raise ValueError(
                    f"observations(*args, **kwargs) must give {len(batches)} tensor(s) with "
                    f"{full} rows (the plate's full size), one per observed site "
                    f"{self._observed_names}"
                )
            return []
        sources = []
        for name, batch in zip(self._observed_names, batches, strict=True):
            if name in self._data:
                value = self._data[name]
                sources.append(("data", value.reshape(full, *batch.shape[1:])))
                continue
            candidates = [("args", i, a) for i, a in enumerate(args)]
            candidates += [("kwargs", k, a) for k, a in kwargs.items()]
            for kind, key, value in candidates:
                if _rows_match(value, batch, indices, full):
                    sources.append((kind, key))
                    break
            else:
                raise ValueError(
                    f"could not find the observations of site '{name}' among the model's "
                    f"arguments (a tensor with {full} rows whose rows at the plate's indices "
                    "are the observed values); pass data={...} or observations=fn, a function "
                    "of the model's arguments that returns them"
                )
        return sources

    def _full_observations(self, args: tuple, kwargs: dict) -> tuple[Tensor, ...]:
        if self._observations is not None:
            return _as_tuple(self._observations(*args, **kwargs))
        found = []
        for source in self._sources:
            kind, key = source[0], source[1]
            if kind == "data":
                found.append(key)
            else:
                found.append(args[key] if kind == "args" else kwargs[key])
        return tuple(found)

    def _batch(self, indices: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, ...]:
        return tuple(
            x.index_select(0, indices.to(x.device)) for x in self._full_observations(args, kwargs)
        )

    def _context_size(self, *batch: Tensor) -> int:
        r"""The size :math:`C` of the encoder's context, checked to be shaped ``[B, C]``."""
        with torch.no_grad():
            context = self.encoder(*batch)
        if not isinstance(context, Tensor) or context.dim() != 2:
            raise ValueError(
                f"the encoder of {type(self).__name__} must return a context shaped [B, C], got "
                f"{getattr(context, 'shape', type(context))}"
            )
        return context.shape[-1]

    def _check_prototype(self, part_trace: poutine.Trace) -> None:
        for name, _ in part_trace.iter_stochastic_nodes():
            if name not in self._global_names:
                raise ValueError(f"the global guide has a site '{name}' that is not global")

    def _default_global_guide(self, model: Callable) -> Callable:
        return AutoNormal(model, init_loc_fn=self._init_loc_fn)

    # --------------------------------------------------------------------------- plates

    def _create_plates(self, *args: Any, **kwargs: Any) -> dict:
        # the data plate is declared as the model declares it at this call (its size follows
        # the observations; a subsample size or explicit indices are the model's), read by
        # running the model up to that plate statement
        self.plates = {}
        for name, frame in sorted(self._prototype_frames.items()):
            if name == self._frame.name:
                self.plates[name] = self._data_plate(args, kwargs)
            else:
                full = frame.full_size or frame.size
                self.plates[name] = pyro.plate(
                    name, full, dim=frame.dim, subsample_size=frame.size
                )
        return self.plates

    def _data_plate(self, args: tuple, kwargs: dict) -> pyro.plate:
        frame = self._frame
        values = {n: s["value"] for n, s in self.prototype_trace.iter_stochastic_nodes()}
        probe = poutine.block(
            _PlateProbe(frame.name)(poutine.condition(self._plain_model, values))
        )
        try:
            probe(*args, **kwargs)
        except _PlateFound as found:
            fn, subsample = found.msg["fn"], found.msg["value"]
            return pyro.plate(
                frame.name,
                fn.size,
                subsample_size=fn.subsample_size,
                subsample=subsample,
                dim=frame.dim,
            )
        full = frame.full_size or frame.size
        return pyro.plate(frame.name, full, subsample_size=frame.size, dim=frame.dim)

    # --------------------------------------------------------------------------- forward

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> Distribution:
        r"""The distribution of the local unconstrained vector given the observation batch:
        batch shape ``[B, *(1,) * inner]``, event shape ``[local_dim]``."""
        raise NotImplementedError

    def _setup_local(self, *batch: Tensor) -> None:
        r"""Builds the local part's modules, and checks the encoder's output on a batch."""
        with torch.no_grad():
            q = self._local_posterior(*batch)
        expected = (len(batch[0]), self.local_dim)
        if tuple(q.batch_shape + q.event_shape) != expected:
            raise ValueError(
                f"the local posterior has shape {tuple(q.batch_shape + q.event_shape)}, "
                f"expected {expected} (batch, local dimension)"
            )

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        r"""Draws the latent sites, with the model's ``*args, **kwargs``.

        Returns:
            A dict from site name to drawn value.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        if self.global_guide is not None:
            result.update(self.global_guide(*args, **kwargs))
        inner = -self._frame.dim - 1
        with plates[self._frame.name] as indices:
            if indices is None:
                indices = torch.arange(plates[self._frame.name].subsample_size)
            q = self._local_posterior(*self._batch(indices, args, kwargs), inner=inner)
            latent = pyro.sample(f"_{self._pyro_name}_local", q, infer={"is_auxiliary": True})
        result.update(self._unpack(latent, plates, inner))
        return result

    def _unpack(self, latent: Tensor, plates: dict, inner: int) -> dict[str, Tensor]:
        lead = latent.shape[: latent.dim() - inner - 2]
        latent = latent.reshape(*lead, latent.shape[-inner - 2], latent.shape[-1])
        result, pos = {}, 0
        for name in self._local_names:
            site = self.prototype_trace.nodes[name]
            shape = self._local_shapes[name]
            size = math.prod(shape)
            unconstrained = latent[..., pos : pos + size].reshape(*latent.shape[:-1], *shape)
            pos += size
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            event_dim = site["fn"].event_dim
            if poutine.get_mask() is False:
                log_density = 0.0
            else:
                log_density = transform.inv.log_abs_det_jacobian(value, unconstrained)
                log_density = sum_rightmost(
                    log_density, log_density.dim() - value.dim() + event_dim
                )
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(
                    name, dist.Delta(value, log_density=log_density, event_dim=event_dim)
                )
        return result


def _in_frame(site: dict, name: str) -> bool:
    return any(f.name == name for f in site["cond_indep_stack"])


def _datum_axis(site: dict, frame, value: Tensor) -> int:
    axis = value.dim() - site["fn"].event_dim + frame.dim
    if axis < 0 or any(s != 1 for s in value.shape[:axis]):
        raise ValueError(
            f"site '{site['name']}' (shape {tuple(value.shape)}) must have plate "
            f"'{frame.name}' as its leftmost batch dimension"
        )
    return axis


def _rows_match(value: Any, batch: Tensor, indices: Tensor, full: int) -> bool:
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != full:
        return False
    if value.shape[1:] != batch.shape[1:]:
        return False
    rows = value.index_select(0, indices.to(value.device))
    return bool(torch.equal(rows.to(batch), batch))


def _as_tuple(value: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    return (value,) if isinstance(value, Tensor) else tuple(value)


def _datum_major(t: Tensor, inner: int) -> Tensor:
    r"""Reshapes ``[B, k]`` to ``[B, *(1,) * inner, k]``, the datum at the plate's dimension."""
    return t.reshape(t.shape[0], *(1,) * inner, t.shape[-1]) if inner else t

r"""Amortized guides: local latents inside a data plate get their posterior from an encoder."""

from __future__ import annotations

__all__ = ["AmortizedFlowGuide", "AmortizedNormal"]

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
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible, init_to_median
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor
from torch.distributions import Distribution, biject_to
from zuko.lazy import LazyDistribution

from .flows import FlowGuide, FlowLatent, build_flow


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


class _AmortizedGuide(AutoGuide):
    r"""The common part of the amortized guides: finding the data plate, its local latents and
    observations, the non-amortized guide of the global latents, and the local sites'
    unconstrained vector. Subclasses give :meth:`_local_posterior`."""

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


class AmortizedNormal(_AmortizedGuide):
    r"""An amortized Gaussian guide: the local latents of each datum get a diagonal normal
    posterior whose parameters an encoder computes from that datum's observation.

    The model has a data plate (found as the plate holding both observed and latent sites, or
    named by ``plate``); the latent sites inside it are local (one value per datum), the
    others global. With :math:`u_i` the local latents of datum :math:`i` concatenated in
    unconstrained space,

    .. math:: q(u_i \mid x_i) = \mathcal{N}\big(u_i \mid \mu_\phi(x_i),
        \mathrm{diag}\,\sigma_\phi(x_i)^2\big), \qquad (\mu_\phi, \sigma_\phi) =
        \mathrm{encoder},

    mapped to each site's support by ``biject_to`` (with its Jacobian), and the global latents
    get a non-amortized guide (:class:`~pyro.infer.autoguide.AutoNormal` by default),
    independent of the local part. One encoder serves every datum, minibatch and new
    observation (a variational autoencoder's encoder).

    Model contract:
        * The data plate is a vectorised ``pyro.plate``; every local site and observed site in
          it has the plate as its leftmost batch dimension, so the datum is the plate axis.
        * At each call the guide declares the data plate as the model does at that call (its
          size, ``subsample_size`` or explicit ``subsample``): it runs the model up to that
          plate statement, with the global sites fixed, and stops there. Its subsample
          indices are then the model's, as in Pyro's usual ``with pyro.plate(...) as ind``
          guides; nothing after the plate statement runs twice.
        * The encoder's input is the observations of the plate's observed sites at those
          indices, one tensor ``[B, *datum_shape]`` per site (in the model's order). The guide
          reads the full observations (``[N, *datum_shape]``, ``N`` the plate's size) from, in
          order: ``observations(*args, **kwargs)`` if given; ``data[site]`` if given (the
          model is then conditioned on ``data`` with :func:`pyro.condition`, as
          ``condgen.condition`` does); otherwise the model argument (positional or keyword)
          whose rows at the plate's indices were the observed values at the first call, e.g.
          ``x`` in ``pyro.sample("x", ..., obs=x[ind])``.
        * The encoder returns ``(loc, scale)``, each ``[B, D]`` with :math:`D` the local
          latents' unconstrained size per datum (sites concatenated in the model's order), and
          ``scale > 0``. An ``nn.Module`` encoder is trained with the guide.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to
            ``(loc, scale)``.
        local: The local sites (default every latent site inside the data plate).
        plate: The data plate's name (default: found).
        data: Observations by site name, full size, applied with :func:`pyro.condition`.
        observations: A function of the model's arguments returning the encoder's input at full
            size (a tensor or a tuple, one per observed site of the plate).
        global_guide: A function from a model (the global part) to a guide, e.g.
            :class:`~pyro.infer.autoguide.AutoNormal` (the default) or
            :class:`~condgen.guides.FlowGuide`.
        init_loc_fn: The initialisation of the global guide.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> decoder = torch.nn.Linear(4, 16)
        >>> images = torch.bernoulli(torch.full((200, 16), 0.3))  # 200 binary "images"
        >>> def model(x, batch_size=None):
        ...     pyro.module("decoder", decoder)
        ...     with pyro.plate("data", len(x), subsample_size=batch_size) as ind:
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        ...         pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[ind])
        >>> class Encoder(torch.nn.Module):  # x [B, 16] -> (loc, scale), [B, 4] each
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.linear = torch.nn.Linear(16, 8)
        ...     def forward(self, x):
        ...         loc, log_scale = self.linear(x).chunk(2, -1)
        ...         return loc, log_scale.exp()
        >>> from condgen.guides import AmortizedNormal
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> guide = AmortizedNormal(model, Encoder())
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        >>> loss = svi.step(images, batch_size=100)
        >>> guide(images, batch_size=100)["z"].shape  # a draw of the local latents
        torch.Size([100, 4])

    References:
        | Auto-Encoding Variational Bayes (Kingma et al., 2013)
        | https://arxiv.org/abs/1312.6114

        | Stochastic Backpropagation and Approximate Inference in Deep Generative Models
        | (Rezende et al., 2014)
        | https://arxiv.org/abs/1401.4082
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
        super().__init__(
            model,
            encoder,
            local=local,
            plate=plate,
            data=data,
            observations=observations,
            global_guide=global_guide,
            init_loc_fn=init_loc_fn,
        )

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> Distribution:
        output = self.encoder(*batch)
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise ValueError("the encoder of AmortizedNormal must return (loc, scale)")
        loc, scale = (_datum_major(t, inner) for t in output)
        return dist.Normal(loc, scale).to_event(1)


class AmortizedFlowGuide(_AmortizedGuide):
    r"""An amortized normalizing-flow guide: the local latents of each datum get a conditional
    zuko flow whose context an encoder computes from that datum's observation.

    With :math:`u_i` the local latents of datum :math:`i` concatenated in unconstrained space
    and :math:`c_i = \mathrm{encoder}(x_i)`,

    .. math:: u_i = \mu(c_i) + \sigma(c_i) \odot f(\epsilon_i; c_i), \quad
        \epsilon_i \sim \mathcal{N}(0, I),

    with :math:`f` a conditional flow of :func:`~condgen.guides.build_flow` (one pass to draw
    and score, starting at the identity) and :math:`(\mu, \log \sigma)` linear in the context,
    starting at the model's initial point and ``init_scale`` for every datum. The global latents
    get a :class:`~condgen.guides.FlowGuide` by default. The model contract (data plate,
    observations, subsampling) is :class:`AmortizedNormal`'s; the encoder returns the context,
    ``[B, C]``.

    Arguments:
        model: A Pyro model.
        encoder: A callable (an ``nn.Module`` to train it) from observation batches to a
            context ``[B, C]``.
        flow: A name in :data:`~condgen.guides.FLOWS`, a factory of zuko flows (called as
            ``flow(features, context, **flow_options)``), or a conditional zuko lazy
            distribution with ``D`` features and ``C`` context features.
        local: The local sites (default every latent site inside the data plate).
        plate: The data plate's name (default: found).
        data: Observations by site name, full size, applied with :func:`pyro.condition`.
        observations: A function of the model's arguments returning the encoder's input.
        global_guide: A function from a model (the global part) to a guide; default
            :class:`~condgen.guides.FlowGuide` with the same flow name.
        init_loc_fn: The initialisation of the local shift and of the global guide.
        init_scale: The initial scale of the local flow (1: the scale of a standard-normal
            prior on the local latents, where a VAE's guide usually starts).
        flow_options: Keyword arguments of the flow class.

    Example:
        >>> import pyro, torch
        >>> import pyro.distributions as dist
        >>> decoder = torch.nn.Linear(4, 16)
        >>> images = torch.bernoulli(torch.full((200, 16), 0.3))  # 200 binary "images"
        >>> def model(x, batch_size=None):
        ...     pyro.module("decoder", decoder)
        ...     with pyro.plate("data", len(x), subsample_size=batch_size) as ind:
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        ...         pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[ind])
        >>> from condgen.guides import AmortizedFlowGuide
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> encoder = torch.nn.Linear(16, 8)  # x [B, 16] -> context [B, 8]
        >>> guide = AmortizedFlowGuide(model, encoder, "nsf", hidden_features=(32, 32))
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        >>> loss = svi.step(images, batch_size=100)
        >>> guide(images, batch_size=100)["z"].shape
        torch.Size([100, 4])

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934
    """

    def __init__(
        self,
        model: Callable,
        encoder: Callable,
        flow: str | Callable[..., LazyDistribution] | LazyDistribution = "nsf",
        *,
        local: Sequence[str] | None = None,
        plate: str | None = None,
        data: Mapping[str, Tensor] | None = None,
        observations: Callable[..., Tensor | Sequence[Tensor]] | None = None,
        global_guide: Callable[[Callable], Callable] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
        **flow_options: Any,
    ):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self._flow_spec = (flow,)  # a tuple: an nn.Module flow is registered once, as .flow
        self._flow_options = flow_options
        self._init_scale = float(init_scale)
        super().__init__(
            model,
            encoder,
            local=local,
            plate=plate,
            data=data,
            observations=observations,
            global_guide=global_guide,
            init_loc_fn=init_loc_fn,
        )

    def _setup_local(self, *batch: Tensor) -> None:
        init = self._local_init
        flow = build_flow(
            self._flow_spec[0],
            self.local_dim,
            self._context_size(*batch),
            loc=init.detach().cpu(),
            scale=self._init_scale,
            **self._flow_options,
        )
        self.flow = flow.to(device=init.device, dtype=init.dtype)
        super()._setup_local(*batch)

    def _default_global_guide(self, model: Callable) -> Callable:
        spec = self._flow_spec[0]
        spec = "nsf" if isinstance(spec, LazyDistribution) else spec
        return FlowGuide(model, spec, init_loc_fn=self._init_loc_fn)

    def _local_posterior(self, *batch: Tensor, inner: int = 0) -> Distribution:
        return FlowLatent(self.flow(_datum_major(self.encoder(*batch), inner)))


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

r"""Particle Gibbs for a neural path prior beside classical unknowns: conditional SMC for the
neural site, NUTS for the others."""

from __future__ import annotations

__all__ = ["Gibbs"]

import math
from collections.abc import Callable

import torch
from pyro.infer import HMC as PyroHMC
from pyro.infer import NUTS as PyroNUTS
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.messenger import Messenger
from torch import Tensor
from tqdm import tqdm

from ..diagnostics import check_convergence
from ..posterior import Posterior
from ..priors.counting import EvaluationCounter
from ..problem import Problem
from .base import Method, register
from .bayesian import init_generative_to_sample
from .particle_filter import run_smc
from .runs import DEFAULT_MAX_RHAT
from .smc import SMC


class _FixedSite(Messenger):
    r"""Fixes a sample site to ``holder["value"]`` and drops its log-density, which is a
    constant when the other sites are updated (the neural prior's would solve an ODE)."""

    def __init__(self, name: str, holder: dict[str, Tensor]):
        super().__init__()
        self.name, self.holder = name, holder

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.name:
            msg["value"] = self.holder["value"]
            msg["is_observed"] = True
            msg["fn"] = msg["fn"].mask(False)


@register
class Gibbs(Method):
    r"""Particle Gibbs for a model with one neural path-prior site :math:`x` and classical
    continuous sites :math:`\theta` (a noise scale, a calibration constant, a forward-model
    parameter): it alternates

    1. a conditional SMC sweep for :math:`x \mid \theta, y` (Andrieu et al., 2010): the
       particles of :class:`~condgen.methods.SMC` (Gaussian twist and optimal proposal for a
       linear-Gaussian observation given :math:`\theta`, the TDS moves otherwise), one of which
       follows the current path of :math:`x` and is never resampled away, but draws its
       ancestor anew at each resampling (ancestor sampling, Lindsten et al., 2014), so that a
       sweep does not collapse onto the old path's early points; the new :math:`x` is a
       particle drawn by its final weight;
    2. a NUTS (or HMC) transition for :math:`\theta \mid x, y`, whose log-density
       :math:`\log p(\theta) + \log p(y \mid x, \theta)` needs only the classical priors and the
       likelihood, never the neural prior's ODE.

    Both steps leave the joint posterior :math:`p(x, \theta \mid y)` invariant (of the path
    prior discretised with ``steps`` steps), whatever the number of particles; more particles
    make :math:`x` move further per sweep. Chains run one after the other, each with
    ``warmup_steps`` iterations in which NUTS adapts its step size and mass matrix. Check
    convergence with R-hat and ESS per site in ArviZ (``post.to_arviz()``), as for ``"nuts"``,
    and the stat ``path_update_rate`` (the fraction of sweeps that moved :math:`x`; near 0 the
    chain for :math:`x` is stuck: give more ``num_particles``).

    The neural site's prior must not depend on the other latent sites (its density is dropped
    from the update of :math:`\theta`).

    Arguments:
        num_chains: The number of chains; ``num_samples`` draws are split among them.
        warmup_steps: Warm-up iterations per chain (NUTS adaptation; draws discarded).
        num_particles: Particles of each conditional SMC sweep.
        steps: Steps of each sweep along the path.
        ess_threshold: Resample a sweep's particles when ESS / particles falls below this.
        kernel: ``"nuts"`` or ``"hmc"`` for the classical sites.
        num_steps: Leapfrog steps of ``kernel="hmc"``.
        target_accept_prob: Target acceptance probability of step-size adaptation.
        max_tree_depth: Maximum depth of the NUTS tree.
        init_strategy: A Pyro initialisation strategy for the classical sites; the neural site
            starts from an unconditional SMC sweep.
        batch_size: Particles whose network evaluations run at once.
        max_rhat: The R-hat above which the chains are said to disagree.

    The chains are checked as NUTS's are (:func:`~condgen.diagnostics.check_convergence`): an
    R-hat above ``max_rhat`` or fewer than 100 effective draws of any coordinate raise a
    :class:`~condgen.diagnostics.ConvergenceWarning` listed in ``stats["warnings"]``.

    Stats:
        ``nfe`` and ``vjp`` (denoiser evaluations and vector-Jacobian products through them
        per particle of a sweep, summed over the sweeps of all chains), ``divergences``,
        ``step_size`` per chain, ``path_update_rate``, ``ess`` (mean final ESS of the sweeps),
        ``ancestors`` (mean distinct ancestors of the sweeps); per draw ``diverging`` and
        ``path_updated`` in ``sample_stats``.

    Example:
        >>> import condgen, pyro, torch
        >>> import pyro.distributions as dist
        >>> from condgen.priors import GaussianMixturePrior
        >>> prior = GaussianMixturePrior(torch.ones(2), torch.tensor([[-2.0], [2.0]]),
        ...                              0.25 * torch.eye(1).expand(2, 1, 1))
        >>> def model():
        ...     s = pyro.sample("s", dist.HalfNormal(1.0))
        ...     x = pyro.sample("x", prior)
        ...     with pyro.plate("obs", 5):
        ...         pyro.sample("y", dist.Normal(x, s.unsqueeze(-1)).to_event(1))
        >>> data = {"y": torch.tensor([[1.5], [2.5], [1.0], [2.2], [1.8]])}
        >>> post = condgen.condition(model, data, method="gibbs", num_chains=2, warmup_steps=50,
        ...                          num_particles=32, steps=20, num_samples=100, seed=0,
        ...                          progress=False)
        >>> post.samples["s"].shape, post.samples["x"].shape
        (torch.Size([2, 50]), torch.Size([2, 50, 1]))

    References:
        | Particle Markov chain Monte Carlo methods (Andrieu, Doucet and Holenstein, 2010)
        | https://doi.org/10.1111/j.1467-9868.2009.00736.x

        | Particle Gibbs with Ancestor Sampling (Lindsten, Jordan and Schön, 2014)
        | https://jmlr.org/papers/v15/lindsten14a.html
    """

    name = "gibbs"
    family = "bayesian"

    def __init__(
        self,
        num_chains: int = 4,
        warmup_steps: int = 200,
        num_particles: int = 64,
        steps: int = 50,
        ess_threshold: float = 0.5,
        kernel: str = "nuts",
        num_steps: int = 10,
        target_accept_prob: float = 0.8,
        max_tree_depth: int = 6,
        init_strategy: Callable | None = None,
        batch_size: int = 1024,
        max_rhat: float = DEFAULT_MAX_RHAT,
    ):
        if num_chains < 1 or warmup_steps < 0 or num_particles < 2:
            raise ValueError("need num_chains >= 1, warmup_steps >= 0 and num_particles >= 2")
        if kernel not in ("nuts", "hmc"):
            raise ValueError(f"kernel must be 'nuts' or 'hmc', got {kernel!r}")
        self.num_chains, self.warmup_steps = num_chains, warmup_steps
        self.num_particles, self.steps, self.ess_threshold = num_particles, steps, ess_threshold
        self.kernel, self.num_steps = kernel, num_steps
        self.target_accept_prob, self.max_tree_depth = target_accept_prob, max_tree_depth
        self.init_strategy = init_strategy or init_generative_to_sample
        self.batch_size, self.max_rhat = batch_size, max_rhat
        self.sampler = SMC(steps=steps, ess_threshold=ess_threshold, batch_size=batch_size)
        self.sampler.name = self.name  # errors of the sweeps name this method

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        problem.require_continuous(self.name)
        placeholders = self._placeholders(problem)
        site = self.sampler.setup(problem, fixed=placeholders).site
        if not placeholders:
            raise ValueError(
                f"method 'gibbs' alternates SMC on the neural site '{site}' with NUTS on the "
                "model's other latent sites, but it has none; use method='smc', which samples "
                f"'{site}' alone"
            )
        draws = math.ceil(num_samples / self.num_chains)
        total = self.num_chains * (self.warmup_steps + draws)
        chains = []
        bar = tqdm(total=total, desc=self.name, disable=not progress)
        with EvaluationCounter() as counter, bar:
            for _ in range(self.num_chains):
                chains.append(self._run_chain(problem, site, draws, bar))
        samples = {k: torch.stack([c["samples"][k] for c in chains]) for k in chains[0]["samples"]}
        sample_stats = {
            k: torch.stack([c["sample_stats"][k] for c in chains])
            for k in chains[0]["sample_stats"]
        }
        stats = {
            **counter.per_particle(self.num_particles),
            "divergences": int(sample_stats["diverging"].sum()),
            "step_size": [c["step_size"] for c in chains],
            "path_update_rate": float(sample_stats["path_updated"].float().mean()),
            "ess": sum(c["ess"] for c in chains) / len(chains),
            "ancestors": sum(c["ancestors"] for c in chains) / len(chains),
        }
        posterior = Posterior(
            problem, samples, sample_stats=sample_stats, stats=stats, method=self.name
        )
        suggestion = f"give more num_particles (now {self.num_particles}) or warmup_steps"
        check_convergence(posterior, max_rhat=self.max_rhat, suggestion=suggestion)
        return posterior

    @staticmethod
    def _placeholders(problem: Problem) -> dict[str, Tensor]:
        r"""Values for the classical sites (only their names matter to find the neural site)."""
        return {
            name: torch.zeros(s.shape, dtype=problem.dtype, device=problem.device)
            for name, s in problem.latent_sites.items()
            if not s.neural
        }

    def _sweep(self, problem: Problem, fixed: dict[str, Tensor], reference: Tensor | None):
        setup = self.sampler.setup(problem, fixed=fixed)
        kernel = self.sampler.kernel(setup)
        x = self.sampler.initial(setup, self.num_particles)
        error = self.sampler.unstable
        result = run_smc(kernel, x, self.ess_threshold, error, reference, keep_path=True)
        chosen = int(torch.multinomial(result.log_weights.exp(), 1))
        return result, chosen

    def _run_chain(self, problem: Problem, site: str, draws: int, bar: tqdm) -> dict:
        holder = {"value": problem.sample_prior(1)[site][0]}
        model = _FixedSite(site, holder)(problem.conditioned_model)
        params, potential_fn, transforms, _ = initialize_model(
            model,
            problem.args,
            problem.kwargs,
            max_plate_nesting=problem.max_plate_nesting,
            init_strategy=self.init_strategy,
        )

        def constrained(z: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: transforms[k].inv(v).detach() for k, v in z.items()}

        if self.kernel == "nuts":
            mcmc = PyroNUTS(
                potential_fn=potential_fn,
                target_accept_prob=self.target_accept_prob,
                max_tree_depth=self.max_tree_depth,
            )
        else:
            mcmc = PyroHMC(
                potential_fn=potential_fn,
                num_steps=self.num_steps,
                target_accept_prob=self.target_accept_prob,
            )
        mcmc.initial_params = params
        result, chosen = self._sweep(problem, constrained(params), None)
        reference = result.path[chosen]
        holder["value"] = result.x[chosen]
        mcmc.setup(self.warmup_steps)
        record = {"samples": [], "diverging": [], "path_updated": []}
        ess = ancestors = 0.0
        for i in range(self.warmup_steps + draws):
            result, chosen = self._sweep(problem, constrained(params), reference)
            reference, holder["value"] = result.path[chosen], result.x[chosen]
            mcmc.clear_cache()  # the potential changed with x
            divergences = len(mcmc._divergences)
            params = mcmc.sample(params)
            ess, ancestors = ess + result.ess, ancestors + result.ancestors
            if i >= self.warmup_steps:
                record["samples"].append({site: holder["value"], **constrained(params)})
                record["diverging"].append(len(mcmc._divergences) > divergences)
                record["path_updated"].append(chosen != 0)
            bar.update()
        iterations = self.warmup_steps + draws
        samples = {k: torch.stack([r[k] for r in record["samples"]]) for k in record["samples"][0]}
        return {
            "samples": samples,
            "sample_stats": {
                "diverging": torch.tensor(record["diverging"], device=problem.device),
                "path_updated": torch.tensor(record["path_updated"], device=problem.device),
            },
            "step_size": float(mcmc.step_size),
            "ess": ess / iterations,
            "ancestors": ancestors / iterations,
        }

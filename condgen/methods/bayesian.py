r"""Bayesian conditioning: NUTS, stochastic variational inference and importance sampling."""

from __future__ import annotations

__all__ = [
    "GUIDES",
    "NUTS",
    "SVI",
    "Importance",
    "build_guide",
    "init_generative_to_sample",
    "spread_inits",
]

import math
import warnings
from collections.abc import Callable
from typing import Any

import arviz as az
import pyro
import pyro.infer.autoguide as autoguides
import torch
from pyro.infer import MCMC, Trace_ELBO
from pyro.infer import NUTS as PyroNUTS
from pyro.infer import SVI as PyroSVI
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc.util import initialize_model
from torch import Tensor
from tqdm import tqdm

from .._resampling import systematic_resample
from ..diagnostics import check_convergence
from ..guides.sivi import KernelSIVI
from ..posterior import Posterior
from ..priors.counting import EvaluationCounter
from ..problem import Problem, is_neural
from .base import Method, register
from .guide_names import GUIDES, build_guide
from .runs import DEFAULT_MAX_RHAT
from .tempered import next_increment, scale_log_likelihood

#: What a warning of an MCMC method suggests.
MCMC_SUGGESTION = (
    "run longer (warmup_steps, num_samples) if the chains mix slowly, or use method='smc' "
    "(tempered or path SMC, whose particles spread over the modes) if they sit in different modes"
)


def init_generative_to_sample(site: dict | None = None):
    r"""Pyro initialisation strategy: a prior draw for sites whose prior is a generative
    model (:attr:`~condgen.Site.neural`), Pyro's ``init_to_uniform`` (uniform on
    :math:`(-2, 2)` in unconstrained space) for the others.

    The uniform box is arbitrary for a learned prior: every chain would start near the same
    point and, on a multimodal prior, in the same mode, where R-hat cannot tell it is stuck.
    Independent prior draws start the chains where the prior's mass is, in different modes.
    """
    if site is None:
        return init_generative_to_sample
    if is_neural(site["fn"]):
        return autoguides.init_to_sample(site)
    return autoguides.init_to_uniform(site)


def spread_inits(problem: Problem, num_chains: int, num_draws: int = 1000) -> list[dict]:
    r"""Overdispersed starting points for ``num_chains`` chains, spread over the modes.

    ``num_draws`` prior draws are weighted by the tempered likelihood :math:`p(y \mid x)^\beta`,
    :math:`\beta` chosen so that half the draws are effective (the first step of tempered SMC),
    and resampled; the points are then picked from that cloud one by one, each the farthest
    (in the unconstrained space, standardised by the cloud's spread) from those picked
    before, the first at random. Chains so started in different modes of a multimodal
    posterior disagree where NUTS cannot cross between the modes, and R-hat says so; chains
    started near each other (Pyro's default, uniform on :math:`(-2, 2)`) may all settle in one
    mode and agree on a wrong answer.

    Returns:
        One dict of constrained values by latent site per chain.
    """
    values = problem.sample_prior(num_draws)
    with torch.no_grad():
        log_lik = torch.nan_to_num(problem.log_likelihood(values), nan=-math.inf)
        uniform = torch.zeros_like(log_lik)
        beta = next_increment(uniform, log_lik, 1.0, 0.5)
        index = systematic_resample(scale_log_likelihood(uniform, log_lik, beta), num_draws)
        z, _ = problem.unconstrained(label="nuts").pack(values, log_lik)
        z = z[index]
        z = (z - z.mean(0)) / z.std(0).clamp(min=1e-12)
    chosen = [int(torch.randint(num_draws, ()))]
    distance = (z - z[chosen[0]]).norm(dim=-1)
    for _ in range(num_chains - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (z - z[chosen[-1]]).norm(dim=-1))
    return [{k: v[index[j]] for k, v in values.items()} for j in chosen]


@register
class NUTS(Method):
    r"""The No-U-Turn sampler (Hoffman and Gelman, 2014), through Pyro's NUTS kernel.

    NUTS targets the exact posterior :math:`p(x \mid y) \propto p(x) p(y \mid x)` in the
    unconstrained space of the latent sites; with several chains, convergence is checked with
    R-hat and ESS in ArviZ. It needs a differentiable log-density: neural priors qualify when
    their ``log_prob`` is exact (normalizing flows, Gaussian mixtures) or computed through an
    ODE (slow). Chains run one after the other, each with its own warm-up.

    Arguments:
        num_chains: The number of chains; ``num_samples`` draws are split among them.
        warmup_steps: Warm-up (adaptation) iterations per chain.
        target_accept_prob: Target acceptance probability of step-size adaptation.
        max_tree_depth: Maximum depth of the NUTS binary tree.
        full_mass: Whether to adapt a dense mass matrix.
        jit_compile: Whether to JIT-compile the potential energy.
        init_strategy: A Pyro initialisation strategy (``pyro.infer.autoguide.init_to_*``),
            the same for every chain; by default each chain starts at its own point of
            :func:`spread_inits`, overdispersed over the modes of a multimodal posterior, so
            that R-hat can see what one chain cannot.
        max_rhat: The R-hat above which the chains are said to disagree. Vehtari et al. (2021)
            advise 1.01 for a final analysis with a bulk ESS above 400; at a few hundred draws
            per chain, R-hat of chains that agree scatters past 1.01 (1.013 and 1.019 on the
            regression of tutorial 01), so warnings start at 1.05; stuck chains sit far
            above (1.5-1.8 on a two-mode model).

    After the run, R-hat and the bulk ESS of every coordinate are checked
    (:func:`~condgen.diagnostics.check_convergence`): chains that disagree, or fewer than 100
    effective draws, raise a :class:`~condgen.diagnostics.ConvergenceWarning` listed in
    ``stats["warnings"]``. Chains that all sit in one mode of a multimodal posterior agree, so
    no R-hat can see that; where that may happen, compare with ``method="smc"``.

    Stats:
        ``nfe`` (log-density gradient evaluations), ``divergences``, ``step_size`` per chain,
        ``rhat``, ``ess_bulk``, ``warnings``; per draw ``diverging``, ``step_size``,
        ``n_steps``, ``lp`` in ``sample_stats``.

    Example:
        >>> import condgen
        >>> from condgen.evaluate import BetaBinomial
        >>> from condgen.methods import NUTS
        >>> task = BetaBinomial(successes=3)  # p ~ Beta(2, 2), 3 successes in 20 trials
        >>> method = NUTS(num_chains=2, warmup_steps=100)  # defaults: 4 chains, 500 warm-up steps
        >>> post = condgen.condition(task.model, task.data, method=method, num_samples=200,
        ...                          seed=0, progress=False)
        >>> post.samples["p"].shape, post.method
        (torch.Size([2, 100]), 'nuts')

    References:
        | The No-U-Turn Sampler (Hoffman et al., 2014)
        | https://arxiv.org/abs/1111.4246
    """

    name = "nuts"
    family = "bayesian"

    def __init__(
        self,
        num_chains: int = 4,
        warmup_steps: int = 500,
        target_accept_prob: float = 0.8,
        max_tree_depth: int = 10,
        full_mass: bool = False,
        jit_compile: bool = False,
        init_strategy: Callable | None = None,
        max_rhat: float = DEFAULT_MAX_RHAT,
    ):
        if num_chains < 1 or warmup_steps < 0:
            raise ValueError("num_chains must be >= 1 and warmup_steps >= 0")
        self.max_rhat = max_rhat
        self.num_chains, self.warmup_steps = num_chains, warmup_steps
        self.target_accept_prob, self.max_tree_depth = target_accept_prob, max_tree_depth
        self.full_mass, self.jit_compile = full_mass, jit_compile
        self.init_strategy = init_strategy

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        problem.require_continuous(self.name)
        draws = math.ceil(num_samples / self.num_chains)
        chains, stats, nfe, divergences, step_sizes = [], [], 0, [], []
        if self.init_strategy is None:
            strategies = [init_to_value(values=v) for v in spread_inits(problem, self.num_chains)]
        else:
            strategies = [self.init_strategy] * self.num_chains
        for strategy in strategies:
            samples, chain_stats, kernel, count = self._run_chain(
                problem, draws, strategy, progress
            )
            chains.append(samples)
            stats.append(chain_stats)
            nfe += count
            divergences.append(int(chain_stats["diverging"].sum()))
            step_sizes.append(float(kernel.step_size))
        samples = {k: torch.stack([c[k] for c in chains]) for k in problem.latent_sites}
        sample_stats = {k: torch.stack([s[k] for s in stats]) for k in stats[0]}
        posterior = Posterior(
            problem,
            samples,
            sample_stats=sample_stats,
            stats={"nfe": nfe, "divergences": sum(divergences), "step_size": step_sizes},
            method=self.name,
        )
        check_convergence(posterior, max_rhat=self.max_rhat, suggestion=MCMC_SUGGESTION)
        return posterior

    def _run_chain(self, problem: Problem, draws: int, init_strategy: Callable, progress: bool):
        init, potential_fn, transforms, _ = initialize_model(
            problem.conditioned_model,
            problem.args,
            problem.kwargs,
            max_plate_nesting=problem.max_plate_nesting,
            jit_compile=self.jit_compile,
            init_strategy=init_strategy,
        )
        counter = EvaluationCounter()
        kernel = PyroNUTS(
            potential_fn=counter.wrap(potential_fn),
            target_accept_prob=self.target_accept_prob,
            max_tree_depth=self.max_tree_depth,
            full_mass=self.full_mass,
        )
        record: dict[str, list] = {"lp": [], "n_steps": [], "step_size": []}
        last = [0]

        def hook(kernel, params, stage, i):
            if stage == "Sample":
                record["lp"].append(-float(kernel._potential_energy_last))
                record["step_size"].append(float(kernel.step_size))
                record["n_steps"].append(counter.evaluations - last[0])
            last[0] = counter.evaluations

        mcmc = MCMC(
            kernel,
            num_samples=draws,
            warmup_steps=self.warmup_steps,
            initial_params=init,
            transforms=transforms,
            disable_progbar=not progress,
            hook_fn=hook,
        )
        mcmc.run()
        samples = mcmc.get_samples()
        diverging = torch.zeros(draws, dtype=torch.bool, device=problem.device)
        post_warmup = [i for i in kernel._divergences if 0 <= i < draws]
        diverging[post_warmup] = True
        stats = {  # on the draws' device; lp and step_size in the model's dtype
            k: torch.tensor(
                v, dtype=None if k == "n_steps" else problem.dtype, device=problem.device
            )
            for k, v in record.items()
        }
        stats["diverging"] = diverging
        values = {k: samples[k].reshape(draws, *s.shape) for k, s in problem.latent_sites.items()}
        return values, stats, kernel, counter.evaluations


@register
class SVI(Method):
    r"""Stochastic variational inference with a Pyro guide, then draws from the fitted guide.

    SVI maximises the evidence lower bound

    .. math:: \mathcal{L}(\phi) = \mathbb{E}_{q_\phi(x)}[\log p(x, y) - \log q_\phi(x)]

    with reparametrised gradients and Adam. It targets :math:`\arg\min_\phi
    \mathrm{KL}(q_\phi \| p(\cdot \mid y))`, so the draws are exact only when the guide family
    contains the posterior (a multivariate normal guide on a Gaussian posterior); otherwise
    they under-disperse, as reverse KL is mode-seeking.

    The objective is ``loss`` if given, else the guide's own (its ``default_loss()``: the
    semi-implicit guide's :class:`~condgen.infer.SIVI_ELBO`, the implicit guide's
    :class:`~condgen.infer.AdversarialELBO`), else ``Trace_ELBO``.

    Arguments:
        guide: A guide name (``"normal"``, ``"mvn"``, ``"lowrank"``, ``"flow"`` for a
            :class:`~condgen.guides.FlowGuide`, ``"semi_implicit"``, ``"implicit"``) or a Pyro
            guide; by default a full-rank multivariate normal (``AutoMultivariateNormal``).
        num_steps: Optimisation steps.
        lr: Initial learning rate of Adam.
        lr_decay: Overall factor by which the learning rate decays over ``num_steps``.
        num_particles: Particles per estimate of ``Trace_ELBO`` (vectorised); an objective
            given or chosen by the guide keeps its own.
        loss: An objective with Pyro's ``loss_and_grads`` (``Trace_ELBO(...)``,
            ``condgen.infer.SIVI_ELBO(...)``, ``condgen.infer.KernelSIVI(...)``, ...), or None.

    Stats:
        ``elbo`` (history; ``ksd``, the kernel Stein discrepancy, with
        :class:`~condgen.infer.KernelSIVI`), ``nfe`` (model evaluations with gradient).

    Example:
        >>> import condgen
        >>> from condgen.evaluate import NormalNormal
        >>> task = NormalNormal(dim=2)  # a Gaussian posterior: in the "normal" guide's family
        >>> post = condgen.condition(task.model, task.data, method="svi", guide="normal",
        ...                          num_steps=1000, num_samples=1000, seed=0, progress=False)
        >>> post.samples["x"].shape
        torch.Size([1, 1000, 2])
        >>> error = post.samples["x"].mean((0, 1)) - task.posterior()["x"].mean
        >>> bool(error.abs().max() < 0.1)
        True

    References:
        | Stochastic Variational Inference (Hoffman et al., 2013)
        | https://arxiv.org/abs/1206.7051
    """

    name = "svi"
    family = "bayesian"

    def __init__(
        self,
        guide: str | Callable | None = None,
        num_steps: int = 2000,
        lr: float = 0.02,
        lr_decay: float = 0.05,
        num_particles: int = 4,
        loss: Any = None,
    ):
        if num_steps < 0 or num_particles < 1 or not 0 < lr_decay <= 1:
            raise ValueError("need num_steps >= 0, num_particles >= 1 and 0 < lr_decay <= 1")
        if loss is not None and not callable(getattr(loss, "loss_and_grads", None)):
            raise ValueError(
                f"loss must be an objective with loss_and_grads (e.g. Trace_ELBO(), "
                f"condgen.infer.SIVI_ELBO()) or None, got {loss!r}"
            )
        self.guide, self.loss, self.num_steps = guide, loss, num_steps
        self.lr, self.lr_decay, self.num_particles = lr, lr_decay, num_particles

    def objective(self, guide: Callable, problem: Problem) -> Any:
        r"""The objective that trains ``guide``: ``loss``, the guide's ``default_loss()`` or
        ``Trace_ELBO``."""
        if self.loss is not None:
            return self.loss
        if hasattr(guide, "default_loss"):
            return guide.default_loss(max_plate_nesting=problem.max_plate_nesting)
        return Trace_ELBO(
            num_particles=self.num_particles,
            vectorize_particles=True,
            max_plate_nesting=problem.max_plate_nesting,
        )

    def fit(self, problem: Problem, progress: bool = True) -> tuple[Callable, list[float]]:
        r"""Fits the guide to the problem's posterior.

        Returns:
            The fitted guide and the history of the ELBO (or of the KSD, see Stats).
        """
        problem.require_continuous(self.name)
        guide = build_guide(self.guide, problem)
        optim = pyro.optim.ClippedAdam(
            {"lr": self.lr, "lrd": self.lr_decay ** (1 / max(self.num_steps, 1))}
        )
        loss = self.objective(guide, problem)
        sign, name = (1, "KSD") if isinstance(loss, KernelSIVI) else (-1, "ELBO")
        svi = PyroSVI(problem.conditioned_model, guide, optim, loss)
        history = []
        with tqdm(range(self.num_steps), desc="SVI", disable=not progress) as bar:
            for step in bar:
                value = sign * svi.step(*problem.args, **problem.kwargs)
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"the {name} became {value} at step {step}; lower lr (now {self.lr}) or "
                        "check the model for invalid parameter values"
                    )
                history.append(value)
                if step % 50 == 0:
                    bar.set_postfix({name.lower(): f"{value:.4g}"})
        return guide, history

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        with pyro.get_param_store().scope():
            guide, history = self.fit(problem, progress)
            values, _ = problem.sample_guide(guide, num_samples)
        loss = self.objective(guide, problem)
        key = "ksd" if isinstance(loss, KernelSIVI) else "elbo"
        return Posterior(
            problem,
            {k: v.unsqueeze(0) for k, v in values.items()},
            stats={key: history, "nfe": self.num_steps * loss.num_particles},
            method=self.name,
        )


def _pareto_smooth(log_weights: Tensor) -> tuple[Tensor, float]:
    smoothed, k_hat = az.psislw(log_weights.detach().cpu().double().numpy())
    return torch.as_tensor(smoothed, dtype=log_weights.dtype, device=log_weights.device), float(
        k_hat
    )


@register
class Importance(Method):
    r"""Self-normalised importance sampling from the prior or from a fitted guide.

    With proposal :math:`q` and draws :math:`x^{(i)} \sim q`, the weights are

    .. math:: w_i \propto \frac{p(x^{(i)}, y)}{q(x^{(i)})},

    and weighted draws target the exact posterior as the number of particles grows. The
    Pareto :math:`\hat k` of the largest weights (Vehtari et al., 2015) says whether the
    estimate can be trusted: above 0.7 the proposal is too far from the posterior and a
    warning is raised. With ``psis=True`` the largest weights are Pareto-smoothed (PSIS),
    which lowers variance at the cost of a small bias.

    Arguments:
        proposal: ``"guide"`` (fit a guide with SVI first) or ``"prior"``.
        guide: The guide for ``proposal="guide"``: a name of :data:`GUIDES` (``"flow"`` for
            a normalizing flow, whose heavier tails suit a proposal) or a Pyro guide (default
            ``"mvn"``).
        num_steps: SVI steps to fit the guide (0 with an already fitted guide).
        psis: Whether to Pareto-smooth the weights.

    Stats:
        ``ess`` (effective sample size of the weights), ``pareto_k``, ``nfe``.

    Example:
        >>> import condgen
        >>> from condgen.evaluate import GaussianLinear
        >>> task = GaussianLinear(dim=2, prior_scale=1.0, noise=0.5)
        >>> post = condgen.condition(task.model, task.data, method="importance",
        ...                          proposal="prior", num_samples=4000, seed=0, progress=False)
        >>> post.log_weights is None  # weighted draws: use moments() or resample()
        False
        >>> mean, sd = post.moments("theta")
        >>> exact = task.posterior()["theta"]
        >>> bool((mean - exact.mean).abs().max() < 0.1 and (sd - exact.stddev).abs().max() < 0.1)
        True

    References:
        | Pareto Smoothed Importance Sampling (Vehtari et al., 2015)
        | https://arxiv.org/abs/1507.02646
    """

    name = "importance"
    family = "bayesian"

    def __init__(
        self,
        proposal: str = "guide",
        guide: str | Callable | None = None,
        num_steps: int = 2000,
        psis: bool = True,
    ):
        if proposal not in ("guide", "prior"):
            raise ValueError(f"proposal must be 'guide' or 'prior', got {proposal!r}")
        self.proposal = proposal
        self.guide = guide
        self.num_steps = num_steps
        self.psis = psis

    def run(self, problem: Problem, num_samples: int, progress: bool = True) -> Posterior:
        nfe = num_samples
        if self.proposal == "prior":
            values = problem.sample_prior(num_samples)
            with torch.no_grad():
                log_weights = problem.log_likelihood(values)
        else:
            problem.require_continuous("importance' with proposal='guide", "proposal='prior'")
            svi = SVI(guide=self.guide, num_steps=self.num_steps)
            with pyro.get_param_store().scope():
                guide, _ = svi.fit(problem, progress)
                values, log_q = problem.sample_guide(guide, num_samples)
            if torch.isnan(log_q).all():
                raise ValueError(
                    f"the guide {type(guide).__name__} has no density to weight its draws by (an "
                    "implicit guide); use guide='semi_implicit' or 'flow', or proposal='prior'"
                )
            with torch.no_grad():
                log_weights = problem.log_joint(values) - log_q
            nfe += svi.num_steps * svi.num_particles
        if not torch.isfinite(log_weights).any():
            raise FloatingPointError("every importance weight is zero or NaN; use method='nuts'")
        log_weights = torch.nan_to_num(log_weights, nan=-math.inf)
        smoothed, k_hat = _pareto_smooth(log_weights)
        if self.psis:
            log_weights = smoothed
        if k_hat > 0.7:
            if self.proposal == "prior":
                advice = "fit a proposal to the posterior (proposal='guide')"
            else:  # more draws do not lower k-hat: it measures the tail of the weights
                advice = f"fit the guide longer (num_steps, now {self.num_steps})"
                if self.guide != "flow":
                    advice += " or use a guide with heavier tails (guide='flow')"
            warnings.warn(
                f"Pareto k-hat of the importance weights is {k_hat:.2f} > 0.7: the estimate is "
                f"unreliable with proposal='{self.proposal}'; {advice}, or use method='nuts'",
                stacklevel=2,
            )
        weights = torch.softmax(log_weights, 0)
        return Posterior(
            problem,
            {k: v.unsqueeze(0) for k, v in values.items()},
            log_weights=log_weights.unsqueeze(0),
            stats={"ess": float(1 / (weights**2).sum()), "pareto_k": k_hat, "nfe": nfe},
            method=self.name,
        )

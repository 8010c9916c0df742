r"""Conditioning tasks with a known posterior, and a registry of them by name.

The tasks come in families, one module each: :mod:`~condgen.evaluate.tasks.conjugate` (closed-form
conjugate posteriors), :mod:`~condgen.evaluate.tasks.mixture` (a Gaussian-mixture prior observed
linearly), and the simulation-based inference benchmark's tasks (Lueckmann et al., 2021):
:mod:`~condgen.evaluate.tasks.sbi` (Gaussian linear, Gaussian linear uniform, Gaussian mixture,
two moons, SLCP), :mod:`~condgen.evaluate.tasks.glm` (Bernoulli GLM) and
:mod:`~condgen.evaluate.tasks.ode` (SIR, Lotka-Volterra), on :class:`SbibmTask` (in
:mod:`~condgen.evaluate.tasks.sbibm`, which reads sbibm's observations and reference draws).
:class:`Task` (in :mod:`~condgen.evaluate.tasks.base`) is their base class. The registry lives
here; the benchmark's tasks are registered under sbibm's names too (``two_moons``,
``gaussian_linear``, ...: sbibm's settings, observation 1 by default).
"""

from __future__ import annotations

__all__ = [
    "SIR",
    "SLCP",
    "TASKS",
    "BayesianLinearRegression",
    "BernoulliGLM",
    "BetaBinomial",
    "GaussianLinear",
    "GaussianLinearUniform",
    "GaussianMixture",
    "GaussianMixtureInverseProblem",
    "LotkaVolterra",
    "NormalNormal",
    "SbibmTask",
    "Task",
    "TwoMoons",
    "TwoMoonsLikelihood",
    "available_tasks",
    "get_task",
    "register_task",
]

import importlib
import inspect
from collections.abc import Callable

from .base import Task
from .base import _generator as _generator  # for the task modules outside this package
from .conjugate import BayesianLinearRegression, BetaBinomial, NormalNormal
from .glm import BernoulliGLM
from .mixture import _CIRCLE, GaussianMixtureInverseProblem
from .ode import SIR, LotkaVolterra
from .sbi import (
    SLCP,
    GaussianLinear,
    GaussianLinearUniform,
    GaussianMixture,
    TwoMoons,
    TwoMoonsLikelihood,
)
from .sbibm import SbibmTask

TASKS: dict[str, type[Task] | Callable[..., Task]] = {}
r"""The tasks by name: a :class:`Task` subclass or a function that returns a task."""

_DESCRIPTIONS: dict[str, str] = {}
_OPTIONAL_MODULES = ("condgen.evaluate.digits",)


def register_task(
    name: str,
    task: type[Task] | Callable[..., Task] | None = None,
    *,
    description: str | None = None,
):
    r"""Registers a task class (or a function that builds a task) under a name.

    Used as a decorator, ``@register_task("name")``, or called,
    ``register_task("name", factory)``. Registering the same class again (e.g. after a module
    reload) replaces it; another task under a taken name is refused.

    Arguments:
        name: The name :func:`get_task` takes.
        task: The class or function; when omitted, a decorator is returned.
        description: One line for :func:`available_tasks`; by default the class's
            ``description``, else the first line of its docstring.

    Returns:
        ``task`` (or a decorator that registers and returns its argument).

    Raises:
        ValueError: If ``name`` is taken by another task.

    Example:
        >>> from condgen.evaluate import Task, available_tasks, register_task
        >>> @register_task("my-task")
        ... class MyTask(Task):
        ...     "A task of one's own."
        >>> available_tasks()["my-task"]
        "A task of one's own."
    """

    def register(factory: type[Task] | Callable[..., Task]):
        existing = TASKS.get(name)
        if existing is not None and _qualified(existing) != _qualified(factory):
            raise ValueError(f"the task name {name!r} is taken by {_qualified(existing)}")
        TASKS[name] = factory
        if description is not None:
            _DESCRIPTIONS[name] = description
        return factory

    return register if task is None else register(task)


def _qualified(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"


def _load_optional() -> None:
    """Imports the modules that register more tasks, where they exist."""
    for module in _OPTIONAL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but one of its imports is missing
                raise


def _describe(name: str) -> str:
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    factory = TASKS[name]
    description = getattr(factory, "description", None)
    if isinstance(description, str) and description:
        return description
    return (inspect.getdoc(factory) or "").split("\n")[0]


def available_tasks() -> dict[str, str]:
    r"""The registered tasks, name to one-line description, in registration order.

    Example:
        >>> from condgen.evaluate import available_tasks
        >>> available_tasks()["two-moons"]
        'uniform prior on [-1, 1]^2, two-moons simulator: a two-crescent posterior'
    """
    _load_optional()
    return {name: _describe(name) for name in TASKS}


def get_task(name: str, **options) -> Task:
    r"""Builds the task registered under ``name`` with its options.

    Arguments:
        name: A name of :func:`available_tasks`.
        options: Keyword arguments of the task's class (or function).

    Raises:
        ValueError: If the name is unknown, or an option is not one of the task's (each
            message lists what exists).

    Example:
        >>> from condgen.evaluate import get_task
        >>> get_task("gmm", dim=80, obs_dim=2, seed=1).operator.shape
        torch.Size([2, 80])
    """
    _load_optional()
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    factory = TASKS[name]
    parameters = inspect.signature(factory).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [p.name for p in parameters if p.kind in kinds]
        unknown = [key for key in options if key not in accepted]
        if unknown:
            raise ValueError(
                f"task {name!r} has no option {', '.join(map(repr, unknown))}; its options "
                f"are: {', '.join(accepted) or 'none'}"
            )
    return factory(**options)


register_task("gmm", GaussianMixtureInverseProblem)
register_task("gmm-circle", GaussianMixtureInverseProblem.circle, description=_CIRCLE)
register_task("gaussian-linear", GaussianLinear)
register_task("two-moons", TwoMoons)
register_task("slcp", SLCP)
register_task("normal-normal", NormalNormal)
register_task("linear-regression", BayesianLinearRegression)
register_task("beta-binomial", BetaBinomial)
register_task(
    "two_moons",
    TwoMoons.sbibm,
    description="the two-moons task at sbibm's observations (1 to 10; default 1)",
)
register_task(
    "gaussian_linear",
    GaussianLinear.sbibm,
    description="theta ~ N(0, 0.1 I_10), x ~ N(theta, 0.1 I): sbibm's Gaussian linear task "
    "(variances 0.1) at its observations (1 to 10; default 1)",
)
for _task in (GaussianMixture, GaussianLinearUniform, BernoulliGLM, SIR, LotkaVolterra):
    register_task(_task.sbibm_name, _task)

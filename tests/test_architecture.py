"""The package's import graph has no cycle, counting imports inside functions too: a module
may use only modules below it (low-level pieces sit in condgen/_*.py). Its parts form layers
whose imports point downward only, nothing inside goes through the public re-exports of
``condgen.infer``, and the names of the design notes keep importing."""

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import condgen

ROOT = Path(condgen.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_target(node: ast.ImportFrom, module: str, package: bool) -> str:
    """The absolute name of the module that ``from ... import`` reads, in ``module`` (a
    package's ``__init__`` when ``package``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + package]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, modules: set[str]) -> set[str]:
    name, package = _module(path), path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = _import_target(node, name, package)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    """The modules of condgen, each with the modules of condgen it imports."""
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    return {m: _imports(p, set(paths)) for m, p in paths.items()}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for dependency in sorted(graph[module]):
            if state.get(dependency) == 1:
                cycle = [*trail[trail.index(dependency) :], module, dependency]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dependency not in state:
                visit(dependency, [*trail, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


# The modules and names of the design notes' layout and public API (../shared/DESIGN.md): a
# module that moves leaves a re-export behind, so that these keep working.
DESIGN_NAMES = {
    "condgen": ["condition", "compare", "methods", "Problem", "Posterior"],
    "condgen.problem": ["Problem"],
    "condgen.posterior": ["Posterior"],
    "condgen.methods": ["available", "DPS", "PiGDM", "TDS", "ClassifierGuidance", "CFG"],
    "condgen.methods.bayesian": [],
    "condgen.methods.guidance": ["DPS", "PiGDM", "ClassifierGuidance", "CFG"],
    "condgen.methods.smc": ["SMC"],
    "condgen.methods.amortized": [],
    "condgen.priors": [
        "DiffusionPrior",
        "FlowMatchingPrior",
        "FlowPrior",
        "GaussianMixturePrior",
        "VPSchedule",
        "VESchedule",
        "CosineSchedule",
        "RectifiedSchedule",
        "load",
    ],
    "condgen.priors.schedules": [],
    "condgen.priors.path": ["DiffusionPrior", "FlowMatchingPrior"],
    "condgen.priors.flow": ["FlowPrior"],
    "condgen.priors.mixture": ["GaussianMixturePrior"],
    "condgen.priors.samplers": [],
    "condgen.priors.nets": [],
    "condgen.priors.training": [],
    "condgen.guides": [
        "FlowGuide",
        "AmortizedNormal",
        "AmortizedFlowGuide",
        "SemiImplicitGuide",
        "ImplicitGuide",
    ],
    "condgen.guides.flows": ["FlowGuide"],
    "condgen.guides.amortized": ["AmortizedNormal", "AmortizedFlowGuide"],
    "condgen.guides.implicit": ["ImplicitGuide"],
    "condgen.infer": ["SIVI_ELBO", "KernelSIVI", "AdversarialELBO", "NPE", "FMPE", "NPSE"],
    "condgen.infer.sivi": ["SIVI_ELBO", "KernelSIVI"],
    "condgen.infer.avb": ["AdversarialELBO"],
    "condgen.infer.npe": ["NPE"],
    "condgen.infer.vector_field": ["FMPE", "NPSE"],
    "condgen.evaluate": [
        "GaussianMixtureInverseProblem",
        "GaussianLinear",
        "TwoMoons",
        "sliced_wasserstein",
        "mmd",
        "energy_distance",
        "c2st",
        "compare",
    ],
    "condgen.evaluate.tasks": ["GaussianMixtureInverseProblem", "GaussianLinear", "TwoMoons"],
    "condgen.evaluate.metrics": ["sliced_wasserstein", "mmd", "energy_distance", "c2st"],
    "condgen.evaluate.compare": ["compare"],
    "condgen.cli": ["main"],
}


@pytest.mark.parametrize("module", sorted(DESIGN_NAMES))
def test_design_layout_imports(module):
    imported = importlib.import_module(module)
    missing = [name for name in DESIGN_NAMES[module] if not hasattr(imported, name)]
    assert not missing, f"{module} lacks {missing}"


# The layers of the package, lowest first: a module may import modules of its own part and of
# lower layers only. The private low-level modules import no other part of condgen (but
# ``_training`` uses ``_optim`` and ``_format``); the Problem and the priors know nothing of
# inference; the likelihoods and the Posterior sit on the Problem, the diagnostics on the
# Posterior; guides and amortized estimators are built from priors and problems; methods use
# all of these; ``condition`` picks a method; evaluation, the public re-exports of
# ``condgen.infer`` and the command line sit on top (``python -m condgen`` runs it), and the
# package's ``__init__`` above everything.
LAYERS = [
    [
        "condgen._checks",
        "condgen._format",
        "condgen._gaussian",
        "condgen._optim",
        "condgen._particles",
        "condgen._random",
        "condgen._resampling",
    ],
    ["condgen._training"],
    ["condgen.problem", "condgen.priors"],
    ["condgen.likelihoods", "condgen.posterior"],
    ["condgen.diagnostics"],
    ["condgen.guides", "condgen.amortized"],
    ["condgen.methods"],
    ["condgen.conditioning"],
    ["condgen.evaluate", "condgen.infer"],
    ["condgen.cli"],
    ["condgen.__main__"],
    ["condgen"],
]


def _part(module: str) -> str:
    """The part of the package a module belongs to: ``condgen.methods.smc`` ->
    ``condgen.methods``."""
    return ".".join(module.split(".")[:2])


def test_layers_point_downward():
    layer = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    graph = _graph()
    unplaced = sorted({_part(m) for m in graph} - set(layer))
    assert not unplaced, f"place {unplaced} in a layer of LAYERS"
    upward = [
        f"{module} -> {dependency}"
        for module, dependencies in sorted(graph.items())
        for dependency in sorted(dependencies)
        if _part(dependency) != _part(module) and layer[_part(dependency)] >= layer[_part(module)]
    ]
    assert not upward, "imports that do not point to a lower layer: " + ", ".join(upward)


def _docstring_examples(tree: ast.Module) -> list[ast.Module]:
    """The code of the docstring examples of a module, parsed."""
    parser, examples = doctest.DocTestParser(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            for example in parser.get_examples(ast.get_docstring(node, clean=True) or ""):
                try:
                    examples.append(ast.parse(example.source))
                except SyntaxError:  # a continuation that only parses with its neighbours
                    continue
    return examples


def _uses_infer(tree: ast.Module, module: str, package: bool) -> bool:
    """Whether code imports ``condgen.infer`` (absolutely or relatively) or reaches it as the
    attribute ``condgen.infer``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _import_target(node, module, package)
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}".replace("cg.", "condgen.", 1)]
        else:
            continue
        if any(n == "condgen.infer" or n.startswith("condgen.infer.") for n in names):
            return True
    return False


def test_nothing_inside_goes_through_condgen_infer():
    """``condgen.infer`` re-exports the objectives and estimators for users; inside the
    package (code and docstring examples) each name is taken from its own module, so that no
    module depends on a forwarding layer. The package's ``__init__`` exposes it as
    ``condgen.infer``."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module(path)
        if module == "condgen" or _part(module) == "condgen.infer":
            continue
        tree = ast.parse(path.read_text())
        package = path.name == "__init__.py"
        if _uses_infer(tree, module, package):
            found.append(f"{module} (code)")
        if any(_uses_infer(example, module, package) for example in _docstring_examples(tree)):
            found.append(f"{module} (docstring example)")
    assert not found, "use the canonical module instead of condgen.infer in: " + ", ".join(found)


def test_problem_private_helpers_stay_inside_the_problem_package():
    """Methods, likelihoods and the rest see a model through Problem's public methods
    (``particle_trace``, ``log_likelihood``, ...): no module outside ``condgen/problem/`` reads
    one of Problem's private members."""
    problem = condgen.Problem(lambda: None)
    private = {
        name
        for name in [*vars(condgen.Problem), *vars(problem)]
        if name.startswith("_") and not name.startswith("__")
    }
    found = [
        f"{_module(path)}: {node.attr}"
        for path in sorted(ROOT.rglob("*.py"))
        if _part(_module(path)) != "condgen.problem"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in private
    ]
    assert not found, "give Problem a public method for: " + ", ".join(found)

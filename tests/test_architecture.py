"""The package's import graph has no cycle, counting imports inside functions too: a module
may use only modules below it (low-level pieces sit in condgen/_*.py)."""

import ast
import importlib
from pathlib import Path

import pytest

import condgen

ROOT = Path(condgen.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    name, package = _module(path), path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + package]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle():
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {m: _imports(p, set(paths)) for m, p in paths.items()}
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
    "condgen.methods.smc": [],
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

"""The documentation covers what the package offers: every public name is in the API
reference, and every registered method is in the method tables of docs/methods.md and of the
README."""

import importlib
import re
from pathlib import Path

import pytest

import condgen

DOCS = Path(__file__).resolve().parent.parent / "docs"
PACKAGES = [
    "condgen.diagnostics",
    "condgen.methods",
    "condgen.priors",
    "condgen.guides",
    "condgen.infer",
    "condgen.evaluate",
]


def api_entries() -> set[str]:
    """The names the API page's autosummary tables document, fully qualified."""
    entries, module = set(), None
    for line in (DOCS / "api.rst").read_text().splitlines():
        if line.startswith(".. currentmodule::"):
            module = line.split("::")[1].strip()
        elif re.fullmatch(r"   [~\w.]+", line) and module is not None:
            name = line.strip().lstrip("~")
            entries.add(name if name.startswith("condgen.") else f"{module}.{name}")
    return entries


@pytest.mark.parametrize("package", ["condgen", *PACKAGES])
def test_every_public_name_is_in_the_api_reference(package):
    entries = api_entries()
    documented = {e.rsplit(".", 1)[-1] for e in entries if e.startswith(f"{package}.")}
    top_level = {e.rsplit(".", 1)[-1] for e in entries if e.count(".") == 1}
    module = importlib.import_module(package)
    # Subpackages are documented as sections; names re-exported at the top are documented there.
    names = {n for n in module.__all__ if f"condgen.{n}" not in PACKAGES}
    missing = sorted(names - documented - (top_level if package != "condgen" else set()))
    assert not missing, f"{package}: add {missing} to docs/api.rst"


def table_methods(text: str) -> set[str]:
    """The method names of a Markdown table's first column (a row may name several)."""
    rows = re.findall(r"^\| (`[^|]+`) \|", text, re.MULTILINE)
    return {name for row in rows for name in re.findall(r"`(\w+)`", row)}


def test_every_method_is_in_the_method_table():
    listed = table_methods((DOCS / "methods.md").read_text())
    assert listed == set(condgen.methods.available()), "update the table in docs/methods.md"


def test_every_method_is_in_the_readme_table():
    text = (DOCS.parent / "README.md").read_text()
    (section,) = re.findall(r"^## Methods\n(.*?)^## ", text, re.DOTALL | re.MULTILINE)
    listed = table_methods(section)
    assert listed == set(condgen.methods.available()), "update the method table in README.md"


def test_the_landing_page_quickstart_runs(tmp_path, monkeypatch):
    """The quickstart on docs/index.md runs as printed, with fewer training steps and draws:
    its TDS draws sit on the ring (radius 2) at the observed first coordinate (y = 1.8).

    Measured: mean of x[0] 1.77, median radius 2.00 (200 particles, prior trained 300 steps).
    The bounds (0.2, 0.25) allow for the rough prior of so short a training, not for draws off
    the ring or away from the observation (a prior-only draw has mean 0 and radius 2)."""
    text = (DOCS / "index.md").read_text()
    (code,) = re.findall(r"## Quickstart\n\n```python\n(.*?)```", text, re.DOTALL)
    assert "steps=2000" in code and "num_samples=500" in code
    code = code.replace("steps=2000", "steps=300").replace("num_samples=500", "num_samples=200")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/index.md quickstart", "exec"), namespace)  # the test is that it runs
    x = namespace["tds"].resample().flatten()["x"]
    assert abs(float(x[:, 0].mean()) - 1.8) < 0.2
    assert abs(float(x.norm(dim=-1).median()) - 2.0) < 0.25

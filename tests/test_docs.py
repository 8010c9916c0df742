"""The documentation covers what the package offers: every public name is in the API
reference, and every registered method is in the method table."""

import importlib
import re
from pathlib import Path

import pytest

import condgen

DOCS = Path(__file__).resolve().parent.parent / "docs"
PACKAGES = [
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


def test_every_method_is_in_the_method_table():
    table = (DOCS / "methods.md").read_text()
    rows = re.findall(r"^\| (`[^|]+`) \|", table, re.MULTILINE)
    listed = {name for row in rows for name in re.findall(r"`(\w+)`", row)}
    assert listed == set(condgen.methods.available()), "update the table in docs/methods.md"

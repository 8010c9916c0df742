"""Runs every tutorial in tutorials/ top to bottom at its reduced size (``CI`` set).

The tutorials are MyST-Markdown notebooks (jupytext); their code cells run here in order in
one namespace, as a notebook kernel would run them.
"""

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.md"))
CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def code_cells(path: Path) -> list[str]:
    return CELL.findall(path.read_text())


def test_tutorials_exist_and_have_code():
    assert TUTORIALS, "tutorials/ has no notebooks"
    for path in TUTORIALS:
        assert code_cells(path), f"{path.name} has no code cells"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    try:
        for index, source in enumerate(code_cells(path)):
            code = compile(source, f"{path.name}[cell {index}]", "exec")
            exec(code, namespace)  # running the tutorial is the test
    finally:
        plt.close("all")

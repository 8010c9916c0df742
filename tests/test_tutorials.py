"""Executes every tutorial in tutorials/ as a notebook, top to bottom, at its reduced size.

The tutorials are MyST-Markdown notebooks (jupytext). Each is read as the documentation build
reads it (myst-nb's reader), executed in a fresh Jupyter kernel with ``CI`` set, and stored in
the documentation's jupyter-cache (``docs/_build/.jupyter_cache-ci``). ``sphinx-build`` with
``CI`` set then finds the executed notebook there, keyed by its code, and renders those outputs
instead of running the notebook a second time; a tutorial whose code changed since is executed
by the build itself.
"""

import os
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy.exc
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from myst_nb.core.read import read_myst_markdown_notebook
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.md"))
CACHE = ROOT / "docs" / "_build" / ".jupyter_cache-ci"  # the path docs/conf.py uses under CI


def read(path: Path):
    return read_myst_markdown_notebook(path.read_text("utf8"), add_source_map=True, path=path)


def store(notebook, path: Path, seconds: float, attempts: int = 10) -> None:
    """Caches the executed notebook; xdist workers may write at once, so a locked database is
    retried."""
    for attempt in range(attempts):
        try:
            bundle = CacheBundleIn(notebook, str(path), data={"execution_seconds": seconds})
            get_cache(str(CACHE)).cache_notebook_bundle(
                bundle, check_validity=False, overwrite=True
            )
            return
        except (sqlite3.OperationalError, sqlalchemy.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def test_tutorials_exist_and_have_code():
    assert len(TUTORIALS) >= 7, [p.name for p in TUTORIALS]
    for path in TUTORIALS:
        notebook = read(path)
        assert notebook.metadata["kernelspec"]["name"] == "python3", path.name
        assert any(cell.cell_type == "code" for cell in notebook.cells), path.name


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two xdist workers share two cores
    # The kernel imports condgen from this checkout, whatever is installed.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    notebook = read(path)
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        record_timing=False,  # timings in the cells' metadata would change the cache key
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    # A reader should not meet warnings: each one is a defect of the tutorial or the library.
    warnings = [
        f"cell {index}: {line}"
        for index, cell in enumerate(notebook.cells)
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr"
        for line in output["text"].splitlines()
        if "Warning" in line or "WARNING" in line
    ]
    assert not warnings, "\n".join(warnings)
    store(notebook, path, time.perf_counter() - start)

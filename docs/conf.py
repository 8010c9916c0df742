"""Sphinx configuration of condgen's documentation site.

Build it with ``sphinx-build -W -b html docs docs/_build/html`` (see CONTRIBUTING.md). The
tutorials (``tutorials/*.md``, MyST notebooks) are executed by myst-nb through its
jupyter-cache: a notebook whose code cells are unchanged since the cache was filled (for
instance by ``tests/test_tutorials.py``, which executes every tutorial into the same cache) is
not executed again.
"""

import os
import shutil
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import condgen  # noqa: E402

# The tutorials live in tutorials/ at the top of the repository; the site shows copies of them
# (docs/tutorials/ is generated, and ignored by git).
shutil.rmtree(ROOT / "docs" / "tutorials", ignore_errors=True)
shutil.copytree(ROOT / "tutorials", ROOT / "docs" / "tutorials")

project = "condgen"
author = "the condgen developers"
copyright = "2026, the condgen developers"
release = version = condgen.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "jupyter_execute", ".jupyter_cache", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]

# The theme.
html_theme = "furo"
html_title = f"condgen {release}"

# The API reference: one page per public name, from Google-style docstrings.
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# MyST and the notebooks: executed (through the cache), and an error in a cell fails the build.
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("CONDGEN_DOCS_EXECUTE", "cache")
# Reduced-size runs (CI set) and full-size runs are cached apart; tests/test_tutorials.py fills
# the reduced-size cache.
_CACHE = ".jupyter_cache-ci" if os.environ.get("CI") else ".jupyter_cache"
nb_execution_cache_path = str(ROOT / "docs" / "_build" / _CACHE)
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = True
nb_execution_timeout = 1800
nb_merge_streams = True

# Links to the projects condgen builds on. Their inventories are fetched over the network; on a
# machine without it (CI here) the mapping is left empty, so that names from these projects are
# shown as plain text instead of failing the build.
INTERSPHINX = {
    "python": "https://docs.python.org/3",
    "torch": "https://pytorch.org/docs/stable",
    "pyro": "https://docs.pyro.ai/en/stable",
    "zuko": "https://zuko.readthedocs.io/stable",
    "arviz": "https://python.arviz.org/en/stable",
}


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/objects.inv", timeout=3):
            return True
    except OSError:
        return False


intersphinx_mapping = {name: (url, None) for name, url in INTERSPHINX.items() if _reachable(url)}

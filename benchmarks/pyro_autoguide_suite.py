r"""FlowGuide in Pyro's own exactness tests: ``test_exact``, ``test_exact_batch`` and
``test_exact_tree`` of Pyro's ``tests/infer/test_autoguide.py``, with condgen's
:class:`~condgen.guides.FlowGuide` in place of ``AutoMultivariateNormal``.

The three tests fit a guide to a Gaussian posterior (one latent; three independent latents in a
plate; a two-level tree of three correlated latents) with Pyro's schedule: ``JitTrace_ELBO``
with 100 vectorised particles, 500 ClippedAdam steps from lr 0.05 down to 0.005. Then they
check the mean of 10,000 (50,000) guide draws to 0.05, their standard deviation to 5% and a
100-particle ELBO to 0.01 of the negative log evidence.

The script does not ship Pyro's code. It reads Pyro's test file from a checkout of the Pyro
version that is installed (``git clone --branch 1.9.1 https://github.com/pyro-ppl/pyro``, the
file and ``tests/common.py`` beside it), writes into a temporary folder

* a copy of the file in which ``AutoMultivariateNormal`` is replaced by :class:`FlowGuideMVN`
  (this script's adapter: ``FlowGuide(model, scale_tril=True, path_derivative=True,
  init_scale=1.0)``) in the parameter lists of the three tests, and nothing else changed but
  the one import of the adapter;
* an unchanged copy, whose ``AutoMultivariateNormal`` cases are the control;
* a ``conftest.py`` that does what Pyro's does (fresh param store, validation on, Pyro's
  default dtype float64) and calls ``pyro.set_rng_seed(k)`` before every test,

and runs pytest on the three tests of both copies for each seed ``k``. It prints a table of
pass or fail per seed (with the assertion that failed) and writes it into ``docs/benchmarks.md``
(section "Pyro's autoguide suite").

Run from the repository root::

    python benchmarks/pyro_autoguide_suite.py ~/pyro/tests/infer/test_autoguide.py
    python benchmarks/pyro_autoguide_suite.py PATH --quick      # seed 0 only, printed only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pyro
import torch
from common import machine, publish, reproduce

from condgen.guides import FlowGuide

SECTION = "Pyro's autoguide suite"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
TESTS = ("test_exact", "test_exact_batch", "test_exact_tree")
REPLACED = "AutoMultivariateNormal"
WHERE = (
    "a checkout of Pyro {version}: git clone --branch {version} "
    "https://github.com/pyro-ppl/pyro, then pass pyro/tests/infer/test_autoguide.py"
)


class FlowGuideMVN(FlowGuide):
    r"""The flow guide that stands in for ``AutoMultivariateNormal``: :class:`FlowGuide` with
    its default flow (NSF), a lower-triangular affine layer (``scale_tril=True``, so that the
    family holds every Gaussian, as the guide it replaces), the path-derivative gradient
    (``path_derivative=True``: zero at an exact fit, so the flow stops moving there) and the
    prior's scale as initial scale (``init_scale=1.0``). Built, as Pyro's tests build every
    guide, from the model alone."""

    def __init__(self, model):
        super().__init__(model, scale_tril=True, path_derivative=True, init_scale=1.0)


def patch(source: str) -> str:
    r"""Pyro's test file with :class:`FlowGuideMVN` in place of ``AutoMultivariateNormal`` in
    the parameter lists of :data:`TESTS`, and the adapter's import; raises if a list or the
    name is not where Pyro 1.9 has it."""
    for name in TESTS:
        found = re.search(
            rf"@pytest\.mark\.parametrize\(\s*\"Guide\",\s*\[(?P<guides>[^\]]*)\],?\s*\)\s*"
            rf"def {name}\(Guide\):",
            source,
        )
        if found is None or f"{REPLACED}," not in found["guides"]:
            raise ValueError(f"{name}'s parameter list with {REPLACED} not found: not Pyro 1.9?")
        guides = found["guides"].replace(f"{REPLACED},", "FlowGuideMVN,", 1)
        source = source[: found.start("guides")] + guides + source[found.end("guides") :]
    anchor = "from pyro.util import check_model_guide_match\n"
    if anchor not in source:
        raise ValueError(f"import {anchor.strip()!r} not found: not Pyro 1.9?")
    return source.replace(anchor, anchor + "from pyro_autoguide_suite import FlowGuideMVN\n", 1)


CONFTEST = '''\
"""Written by condgen's benchmarks/pyro_autoguide_suite.py: Pyro's set-up, seed {seed}."""

import os
import sys

import pytest
import torch

import pyro

sys.path.insert(0, {benchmarks!r})
torch.set_default_dtype(getattr(torch, os.environ.get("PYRO_DTYPE", {dtype!r})))
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "stage(NAME): Pyro's test stages")
    config.addinivalue_line("markers", "init(rng_seed): Pyro's seed marker")


def pytest_runtest_setup(item):
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed({seed})
'''


def write_suite(folder: Path, test_file: Path, seed: int, dtype: str) -> None:
    common = test_file.parent.parent / "common.py"
    if not common.exists():
        raise SystemExit(f"{common} not found: pass test_autoguide.py inside {WHERE}")
    source = test_file.read_text()
    tests = folder / "tests"
    (tests / "infer").mkdir(parents=True, exist_ok=True)
    for init in (tests / "__init__.py", tests / "infer" / "__init__.py"):
        init.write_text("")
    (tests / "common.py").write_text(common.read_text())
    (tests / "infer" / "test_autoguide.py").write_text(patch(source))
    (tests / "infer" / "test_autoguide_control.py").write_text(source)
    benchmarks = str(Path(__file__).resolve().parent)
    (folder / "conftest.py").write_text(
        CONFTEST.format(seed=seed, benchmarks=benchmarks, dtype=dtype)
    )
    (folder / "pytest.ini").write_text("[pytest]\n")


def node_ids() -> list[str]:
    flow = [f"tests/infer/test_autoguide.py::{t}[FlowGuideMVN]" for t in TESTS]
    control = [f"tests/infer/test_autoguide_control.py::{t}[{REPLACED}]" for t in TESTS]
    return flow + control


def failure(message: str) -> str:
    r"""A short form of a failed assertion of Pyro's ``assert_close``."""
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    first = re.sub(r"\s+", " ", first.replace("AssertionError:", "")).strip()
    return first[:120]


def run_seed(test_file: Path, seed: int, dtype: str) -> dict[tuple[str, str], dict]:
    r"""Runs the three tests of both copies at one seed; returns, by (guide, test), whether it
    passed, the time and the failure."""
    with tempfile.TemporaryDirectory(prefix="pyro_autoguide_suite_") as tmp:
        folder = Path(tmp)
        write_suite(folder, test_file, seed, dtype)
        report = folder / "report.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += [f"--junitxml={report}", "-W", "ignore", *node_ids()]
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
        if not report.exists():
            raise RuntimeError(f"pytest did not run:\n{done.stdout}\n{done.stderr}")
        results = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            found = re.fullmatch(r"(test_\w+)\[(\w+)\]", case.get("name", ""))
            if found is None:
                continue
            test, guide = found.groups()
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            results[guide, test] = {
                "passed": bad is None and case.find("skipped") is None,
                "time_s": float(case.get("time", "nan")),
                "failure": None if bad is None else failure(bad.get("message", "")),
            }
        if len(results) != len(node_ids()):
            raise RuntimeError(f"expected {len(node_ids())} results:\n{done.stdout[-3000:]}")
        return results


def table(runs: dict[int, dict], guide: str) -> str:
    lines = [
        "| seed k | " + " | ".join(f"`{t}`" for t in TESTS) + " | time (s) |",
        "|---|" + "---|" * (len(TESTS) + 1),
    ]
    for seed, results in runs.items():
        cells = []
        for test in TESTS:
            r = results[guide, test]
            cells.append("pass" if r["passed"] else f"**fail**: {r['failure']}")
        total = sum(results[guide, t]["time_s"] for t in TESTS)
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {total:.0f} |")
    passed = sum(runs[k][guide, t]["passed"] for k in runs for t in TESTS)
    lines += ["", f"{passed} of {len(runs) * len(TESTS)} passed."]
    return "\n".join(lines)


def report(runs: dict[int, dict], args: argparse.Namespace) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"## {SECTION}",
            "",
            f"Run on {date}: {_machine()}.",
            "",
            "Reproduce (from the repository root, with a checkout of Pyro's tests):",
            "",
            "```bash",
            reproduce("pyro_autoguide_suite.py", args.argv),
            "```",
            "",
            "Pyro's own `test_exact`, `test_exact_batch` and `test_exact_tree` "
            "(`tests/infer/test_autoguide.py` of Pyro's git tag "
            f"{args.pyro_tag or 'given'}, run against the installed Pyro {pyro.__version__}), "
            "unchanged but for `FlowGuide(model, scale_tril=True, path_derivative=True, "
            "init_scale=1.0)` (default NSF flow, lower-triangular affine layer, "
            "path-derivative gradient, prior scale) in place of `AutoMultivariateNormal`; Pyro's "
            "set-up (float64, validation on) with `pyro.set_rng_seed(k)` before every test, "
            "one thread. Each test fits a Gaussian posterior with 500 ClippedAdam steps "
            "(lr 0.05 to 0.005, 100 vectorised particles) and checks the draws' mean to "
            "0.05, their sd to 5% and a 100-particle ELBO to 0.01 of the exact value. "
            "Times are pytest's, per seed, for the three tests.",
            "",
            "**FlowGuide**",
            "",
            table(runs, "FlowGuideMVN"),
            "",
            "**AutoMultivariateNormal** (the control: the unchanged file)",
            "",
            table(runs, REPLACED),
        ]
    )


def _machine() -> str:
    import zuko

    return machine([f"Pyro {pyro.__version__}", f"zuko {zuko.__version__}"])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = WHERE.format(version=pyro.__version__.split("+")[0])
    parser.add_argument(
        "test_file", type=Path, nargs="?", default=None, help=f"Pyro's test file, from {where}"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--pyro-tag", default=None, help="the Pyro git tag the file is from, for the report"
    )
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DOCS}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--quick", action="store_true", help="seed 0 only (printed only)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.test_file is None:
        parser.error(f"pass the path of Pyro's tests/infer/test_autoguide.py, from {where}")
    if not args.test_file.exists():
        parser.error(f"{args.test_file} not found; get it from {where}")
    if args.quick:
        args.seeds = [0]
    if args.output is None and not args.quick:
        args.output = DOCS
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    print(f"machine: {_machine()}")
    runs = {}
    for seed in args.seeds:
        runs[seed] = run_seed(args.test_file.resolve(), seed, args.dtype)
        for (guide, test), r in runs[seed].items():
            verdict = "pass" if r["passed"] else f"FAIL {r['failure']}"
            print(f"k={seed} {guide:22s} {test:17s} {r['time_s']:6.1f} s  {verdict}", flush=True)
    if args.json is not None:
        flat = {f"{k}/{g}/{t}": r for k, rs in runs.items() for (g, t), r in rs.items()}
        args.json.write_text(json.dumps(flat, indent=1))
    torch.set_num_threads(1)
    return publish(report(runs, args), args, start)


if __name__ == "__main__":
    main()

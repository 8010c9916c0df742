r"""Shared pieces of the benchmark scripts: the common options, the machine line, a timed run
of ``condition`` and the docs section writer."""

from __future__ import annotations

__all__ = [
    "arguments",
    "begin",
    "benchmark",
    "heading",
    "machine",
    "publish",
    "quiet_condition",
    "reproduce",
    "write_section",
]

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

import condgen

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.processor() or platform.machine()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(extra: Iterable[str] = ()) -> str:
    r"""The CPU model, core count, torch and its thread count, Python, condgen's commit and
    ``extra`` (e.g. the peers' versions), in one line."""
    parts = [
        _cpu(),
        f"{os.cpu_count()} cores visible",
        f"torch {torch.__version__} ({torch.get_num_threads()} thread)",
        f"Python {platform.python_version()}",
        f"condgen commit {_commit()}",
        *extra,
    ]
    return ", ".join(parts)


def arguments(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    quick: Callable[[argparse.Namespace], Mapping[str, Any]],
    *,
    quick_help: str | None = "smoke run",
    threads: int | None = None,
) -> argparse.Namespace:
    r"""Adds the options every benchmark shares to ``parser`` (``--threads`` when ``threads``
    is its default, ``--output``, ``--no-write``, ``--quick``) and parses ``argv`` (by default
    the command line's). Under ``--quick`` the options ``quick(args)`` returns replace the
    parsed ones; the report goes to docs/benchmarks.md unless ``--quick`` is given without
    ``--output``. ``args.argv`` keeps the arguments, for :func:`reproduce`."""
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DOCS}")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        vars(args).update(quick(args))
    if args.output is None and not args.quick:
        args.output = DOCS
    return args


def begin(args: argparse.Namespace, describe: Callable[[], str] = machine) -> tuple[str, float]:
    r"""Sets torch's threads (``args.threads``, else one), starts the clock and prints the
    machine line ``describe()`` (taken at the start: the commit that runs). Returns the line
    and the start, a ``time.perf_counter()``."""
    torch.set_num_threads(getattr(args, "threads", 1))
    start = time.perf_counter()
    line = describe()
    print(f"machine: {line}")
    return line, start


def benchmark(
    args: argparse.Namespace,
    measure: Callable[[argparse.Namespace], Any],
    report: Callable[[Any, argparse.Namespace, str], str],
    describe: Callable[[], str] = machine,
) -> str:
    r"""Runs a benchmark: :func:`begin`, then ``records = measure(args)``, then publishes
    ``report(records, args, machine_line)`` with the total time (:func:`publish`). Returns the
    report."""
    line, start = begin(args, describe)
    return publish(report(measure(args), args, line), args, start)


def heading(section: str, machine_line: str, *commands: str) -> list[str]:
    r"""The first lines of a report: the section's title, the date and the machine, and the
    ``commands`` that reproduce it from the repository root."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"## {section}",
        "",
        f"Run on {date}: {machine_line}.",
        "",
        "Reproduce (from the repository root):",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]


def quiet_condition(
    model: Callable, data: Mapping, method: str, **options: Any
) -> tuple[condgen.Posterior, float]:
    r"""``condgen.condition(model, data, method=method, progress=False, **options)`` with its
    warnings silenced; returns the posterior and the seconds it took."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = condgen.condition(model, data, method=method, progress=False, **options)
    return post, time.perf_counter() - start


def reproduce(script: str, argv: list[str]) -> str:
    r"""The command that reruns ``benchmarks/<script>`` with the options ``argv``, less where
    this run wrote its report (``--output PATH``), which a rerun takes as its default."""
    shown, skip = [], False
    for arg in argv:
        if skip or arg == "--output":
            skip = not skip
        elif not arg.startswith("--output="):
            shown.append(arg)
    return " ".join(["python", f"benchmarks/{script}", *shown])


def write_section(path: Path, section: str) -> None:
    r"""Writes ``section`` (starting with ``## <title>``) into ``path``: it replaces the section
    of the same title up to the next ``## `` heading, or is appended; other sections stay."""
    title = section.lstrip().splitlines()[0]
    if not title.startswith("## "):
        raise ValueError(f"a section starts with '## <title>', got {title!r}")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    section = section.strip() + "\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(text: str, args: argparse.Namespace, start: float | None = None) -> str:
    r"""Prints a benchmark's report and writes it into ``args.output`` (its section of
    docs/benchmarks.md) unless ``args.no_write``; with ``start`` (a ``time.perf_counter()``),
    prints the total time too. Returns ``text``."""
    print()
    print(text)
    if args.output is not None and not args.no_write:
        write_section(args.output, text)
        print(f"written to {args.output}")
    if start is not None:
        print(f"total {time.perf_counter() - start:.0f} s")
    return text

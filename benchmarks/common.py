r"""Shared pieces of the benchmark scripts: the machine line and the docs section writer."""

from __future__ import annotations

import argparse
import time

__all__ = ["machine", "reproduce", "write_section"]

import os
import platform
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import torch

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

r"""Data-parallel training: the throughput of one prior's fit in one process and in two.

One fit, a :class:`~condgen.priors.DiffusionPrior` with condgen's MLP (three hidden layers of
512 units, about 0.7 million weights) on 16384 standardised samples of a 64-dimensional
correlated Gaussian, global minibatches of 512, AdamW with clipping and an EMA (the defaults
of ``prior.fit``), runs in three configurations of the same two cores:

* 1 process x 1 thread;
* 1 process x 2 threads (torch's intra-op parallelism);
* 2 processes x 1 thread, under ``torchrun --standalone --nproc_per_node=2`` (gloo): each
  process takes half of every minibatch, and one all-reduce a step averages the gradients.

Each configuration runs in fresh processes: a warm-up fit (which also sets up gloo's
connections), then the timed fit of ``--steps`` steps between two barriers. Throughput is
steps per second and samples per second (steps/s times the global minibatch); the best of
``--repeats`` runs (the configurations interleaved) is reported, beside the speed-ups over
1 x 1. The script also checks that the 2-process fit ends with the 1-process weights (the
ranks share each minibatch's noise, so only the rounding of the split sums differs) and exits
with an error, without writing, if they differ by more than ``--tolerance``.

Run from the repository root, alone on the machine (other work on its cores skews the
ratios)::

    python benchmarks/distributed.py          # 300 timed steps, 3 repeats: a few minutes
    python benchmarks/distributed.py --quick  # a smoke run, printed only

The Markdown report is printed and written to ``docs/benchmarks.md`` (section "Data-parallel
training"; other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import arguments, begin, heading, machine, publish, reproduce

SECTION = "Data-parallel training"
SCRIPT = Path(__file__).resolve()
CONFIGURATIONS = {  # name: (processes, threads per process)
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 1),
}


def samples(count: int, features: int) -> torch.Tensor:
    r"""``count`` standardised draws of a ``features``-dimensional Gaussian with a random
    covariance, from a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(features, features, generator=generator) / features**0.5
    x = torch.randn(count, features, generator=generator) @ mixing.T
    return (x - x.mean(0)) / x.std(0)


def _prior(args: argparse.Namespace, seed: int) -> Any:
    from condgen.priors import MLP, DiffusionPrior

    torch.manual_seed(seed)
    network = MLP(args.features, hidden=[args.hidden] * args.layers)
    return DiffusionPrior(network, event_shape=(args.features,))


def worker(args: argparse.Namespace) -> None:
    r"""One measurement in this process (one rank of it under torchrun): a warm-up fit, then
    the timed fit; rank 0 saves the seconds, the losses and the weights to ``args.worker``."""
    import torch.distributed as dist

    torch.set_num_threads(args.worker_threads)
    data = samples(args.samples, args.features)
    options = {"batch_size": args.batch_size, "progress": False}
    _prior(args, seed=1).fit(data, steps=args.warmup, **options)  # joins torchrun's group
    distributed = dist.is_initialized()
    prior = _prior(args, seed=0)
    if distributed:
        dist.barrier()
    start = time.perf_counter()
    losses = prior.fit(data, steps=args.steps, **options)
    if distributed:
        dist.barrier()
    seconds = time.perf_counter() - start
    if not distributed or dist.get_rank() == 0:
        record = {"seconds": seconds, "losses": losses, "state": prior.network.state_dict()}
        record["threads"] = torch.get_num_threads()
        torch.save(record, args.worker)
    if distributed:
        dist.destroy_process_group()


def _run(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    r"""Runs the configuration ``name`` in fresh processes; returns rank 0's record."""
    processes, threads = CONFIGURATIONS[name]
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={processes}"]
    command += [str(SCRIPT), "--worker", str(out), "--worker-threads", str(threads)]
    for option in ("features", "samples", "hidden", "layers", "batch_size", "steps", "warmup"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return torch.load(out)


def measure(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    r"""Every configuration ``args.repeats`` times, interleaved: their records."""
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name in CONFIGURATIONS:
                record = _run(name, args, Path(folder) / "record.pt")
                records[name].append(record)
                rate = args.steps / record["seconds"]
                print(f"repeat {repeat + 1}/{args.repeats}, {name}: {rate:.1f} steps/s")
    return records


def _difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    r"""The largest absolute difference of two state dicts, and that over the largest
    absolute weight."""
    largest = max(value.abs().max().item() for value in b.values())
    gap = max((a[name] - b[name]).abs().max().item() for name in b)
    return gap, gap / largest


def report(records: dict[str, list[dict[str, Any]]], args: argparse.Namespace, line: str) -> str:
    r"""The Markdown section: the throughput table, the speed-ups and the weights' check."""
    best = {name: min(r["seconds"] for r in runs) for name, runs in records.items()}
    baseline = best["1 process x 1 thread"]
    reference = records["1 process x 1 thread"][0]["state"]
    gap, relative = _difference(records["2 processes x 1 thread"][0]["state"], reference)
    threads_gap, _ = _difference(records["1 process x 2 threads"][0]["state"], reference)
    if relative > args.tolerance:
        raise SystemExit(
            f"the 2-process fit's weights differ from the 1-process fit's by {gap:.3g} "
            f"({relative:.3g} of the largest weight, above --tolerance {args.tolerance}): "
            f"not written"
        )
    weights = sum(value.numel() for value in reference.values())
    lines = heading(SECTION, line, reproduce("distributed.py", args.argv))
    lines += [
        f"One `DiffusionPrior.fit`: condgen's MLP ({args.layers} hidden layers of "
        f"{args.hidden}, {weights:,} weights) on {args.samples} standardised samples of a "
        f"{args.features}-dimensional Gaussian, global minibatch {args.batch_size}, the fit's "
        f"defaults (AdamW, clipping, EMA); {args.steps} timed steps after a warm-up fit of "
        f"{args.warmup}, in fresh processes; the best of {args.repeats} runs. The 2-process "
        f"runs are `torchrun --standalone --nproc_per_node=2` on gloo (CPU): each process "
        f"takes {args.batch_size // 2} samples of every minibatch.",
        "",
        "| configuration | steps/s | samples/s | speed-up | runs (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, runs in records.items():
        rate = args.steps / best[name]
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        lines.append(
            f"| {name} | {rate:.1f} | {rate * args.batch_size:,.0f} | "
            f"{baseline / best[name]:.2f}x | {times} |"
        )
    two, threads = (
        baseline / best["2 processes x 1 thread"],
        baseline / best["1 process x 2 threads"],
    )
    lines += [
        "",
        f"Speed-up of 2 processes over 1 process x 1 thread: {two:.2f}x; of 2 threads: "
        f"{threads:.2f}x; of 2 processes over 2 threads: {two / threads:.2f}x.",
        "",
        f"The 2-process fit ends with the 1-process weights: max |difference| {gap:.2g} "
        f"({relative:.2g} of the largest weight; checked against {args.tolerance:g}). "
        f"1 process x 2 threads ends {threads_gap:.2g} from 1 x 1.",
    ]
    return "\n".join(lines)


def _quick(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": 40, "warmup": 5, "repeats": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=64, help="dimension of the samples")
    parser.add_argument("--samples", type=int, default=16384, help="training samples")
    parser.add_argument("--hidden", type=int, default=512, help="width of the MLP's layers")
    parser.add_argument("--layers", type=int, default=3, help="hidden layers of the MLP")
    parser.add_argument("--batch-size", type=int, default=512, help="global minibatch")
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--warmup", type=int, default=20, help="steps of the warm-up fit")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest difference of the 2- and 1-process weights, over the largest weight",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    if "--worker" in (sys.argv[1:] if argv is None else argv):
        worker(parser.parse_args(argv))
        return
    args = arguments(parser, argv, _quick, quick_help="40 timed steps, 1 repeat, printed only")
    line, start = begin(args, lambda: machine(["gloo"]))
    publish(report(measure(args), args, line), args, start)


if __name__ == "__main__":
    main()

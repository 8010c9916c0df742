"""Training and conditioning throughput of a path prior with condgen's UNet, on the CPU or CUDA.

Training: optimisation steps per second of ``DiffusionPrior.fit`` on ``1 x S x S`` images, in
float32, with bfloat16 autocast (``fit(autocast=torch.bfloat16)``) and with the network compiled
(``prior.compile()``, the inductor backend; by default on CUDA only: on a CPU its compilation
takes minutes, and the compiled smc of ``--quick --compile on`` had not finished in 7 minutes on
a 2-core machine, recompiling for its several batch shapes). Conditioning: particles x sampler
steps per second of ``smc`` and ``dps`` on an inpainting model (half of the pixels observed
with noise 0.1), uncompiled and compiled, with the seconds of the call (smc's include the 1024
prior draws of its twist's moments).

Every figure excludes a warm-up (the first steps, or a short run with the same shapes, which
holds any compilation). The images are standard normal noise: the cost does not depend on their
content. The report names the device (the CUDA device's name on a GPU).

Usage: ``python benchmarks/throughput.py [--device cuda] [--size 16] [--steps 200]
[--particles 256] [--sampler-steps 50] [--compile on|off|auto] [--quick] [--no-write]``; the
report goes to docs/benchmarks.md (section "Throughput on <device>") unless ``--quick`` or
``--no-write``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from common import arguments, begin, heading, machine, publish, quiet_condition, reproduce

from condgen.priors import DiffusionPrior, UNet

QUICK = {"size": 8, "steps": 6, "particles": 16, "sampler_steps": 4, "base": 8}


def device_name(device: torch.device) -> str:
    r"""The CUDA device's name, or ``"CPU"``."""
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return "CPU"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_prior(args: argparse.Namespace, device: torch.device) -> DiffusionPrior:
    r"""An untrained UNet path prior on ``1 x size x size`` images, on ``device``."""
    torch.manual_seed(0)
    network = UNet(1, base=args.base, levels=2)
    prior = DiffusionPrior(network, event_shape=(1, args.size, args.size), sampler="ddpm")
    return prior.to(device)


def training_rate(
    prior: DiffusionPrior, data: torch.Tensor, args: argparse.Namespace, **options: Any
) -> float:
    r"""Steps per second of ``prior.fit`` after ``max(2, steps // 10)`` warm-up steps."""
    fit = {"batch_size": args.batch_size, "progress": False, **options}
    prior.fit(data, steps=max(2, args.steps // 10), **fit)
    synchronize(data.device)
    start = time.perf_counter()
    prior.fit(data, steps=args.steps, **fit)
    synchronize(data.device)
    return args.steps / (time.perf_counter() - start)


def inpainting(prior: DiffusionPrior, device: torch.device) -> tuple[Callable, dict]:
    r"""The model ``y = x[observed pixels] + 0.1 eps`` (the left half of the image) and an
    observation."""
    size = prior.event_shape[-1]
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[:, : size // 2] = True
    observed = mask.flatten().nonzero().squeeze(-1)

    def model():
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x.flatten(-3)[..., observed], 0.1).to_event(1))

    generator = torch.Generator(device).manual_seed(1)
    y = torch.randn(len(observed), generator=generator, device=device)
    return model, {"y": y}


def conditioning_rate(
    prior: DiffusionPrior, method: str, args: argparse.Namespace
) -> tuple[float, float]:
    r"""Particles x sampler steps per second of ``method`` on the inpainting model, and the
    seconds of the call (with its setup: smc draws 1024 prior samples for its twist's
    moments), after a warm-up run of 2 steps with the same particles (the same shapes)."""
    device = prior._device_dtype()[0]
    model, data = inpainting(prior, device)
    options = {"num_samples": args.particles, "seed": 0}
    if method == "smc":
        options["num_runs"] = 1
    quiet_condition(model, data, method, steps=2, **options)
    synchronize(device)
    post, seconds = quiet_condition(model, data, method, steps=args.sampler_steps, **options)
    synchronize(device)
    particles = post.samples["x"].shape[0] * post.samples["x"].shape[1]
    return particles * args.sampler_steps / seconds, seconds


def measure(args: argparse.Namespace) -> list[tuple[str, str, str, float, float]]:
    r"""Rows ``(what, precision, compiled, rate, seconds)``."""
    device = torch.device(args.device)
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(4 * args.batch_size, 1, args.size, args.size, generator=generator)
    data = data.to(device)
    rows = []
    variants = [("float32", "no", {}), ("bf16 autocast", "no", {"autocast": torch.bfloat16})]
    if compiled:
        variants.append(("float32", "yes", {}))
    for precision, is_compiled, options in variants:
        prior = make_prior(args, device)
        if is_compiled == "yes":
            prior.compile()
        rate = training_rate(prior, data, args, **options)
        rows.append(("training (steps/s)", precision, is_compiled, rate, args.steps / rate))
        print(f"training {precision} compiled={is_compiled}: {rate:.2f} steps/s")
    prior = make_prior(args, device)
    versions = [("no", prior)]
    if compiled:
        versions.append(("yes", copy.deepcopy(prior).compile()))
    for method in ("smc", "dps"):
        for is_compiled, version in versions:
            rate, seconds = conditioning_rate(version, method, args)
            what = f"{method} (particles x steps/s)"
            rows.append((what, "float32", is_compiled, rate, seconds))
            print(f"{method} compiled={is_compiled}: {rate:.1f} particles x steps/s")
    return rows


def report(rows: list, args: argparse.Namespace, machine_line: str) -> str:
    device = device_name(torch.device(args.device))
    lines = heading(f"Throughput on {device}", machine_line, reproduce("throughput.py", args.argv))
    lines += [
        f"A `DiffusionPrior` with condgen's `UNet(1, base={args.base}, levels=2)` on "
        f"1 x {args.size} x {args.size} images. Training: `fit` with batches of "
        f"{args.batch_size}, {args.steps} timed steps after a warm-up. Conditioning: "
        f"{args.particles} particles (smc: one run), {args.sampler_steps} sampler steps, on "
        f"an inpainting model (the left half of the pixels observed, noise 0.1).",
        "",
        "| measure | precision | compiled | rate | seconds |",
        "|---|---|---|---:|---:|",
    ]
    for what, precision, compiled, rate, seconds in rows:
        lines.append(f"| {what} | {precision} | {compiled} | {rate:,.1f} | {seconds:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default)
    parser.add_argument("--size", type=int, default=16, help="image side (a multiple of 4)")
    parser.add_argument("--base", type=int, default=32, help="the UNet's base width")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--sampler-steps", type=int, default=50)
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="compiled rows (inductor): auto = on CUDA only",
    )
    args = arguments(parser, argv, lambda _: QUICK, threads=1)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.size % 4:
        parser.error(f"--size must be a multiple of 4 (two halvings), got {args.size}")
    device = torch.device(args.device)
    line, start = begin(args, lambda: machine([f"device {device_name(device)}"]))
    return publish(report(measure(args), args, line), args, start)


if __name__ == "__main__":
    main()

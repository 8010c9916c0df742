"""Training and sampling speed of condgen's path priors against minimal plain-PyTorch loops.

Training: steps per second of ``DiffusionPrior.fit`` against a hand-written loop with the same
network, batch, loss, optimiser (AdamW), gradient clipping and EMA. Sampling: draws per second
and time per network evaluation (NFE) of ``prior.sample`` against calling the network the same
number of times. The ratios (condgen / plain) are the overhead; the target is under 10 percent.

Usage: ``python benchmarks/priors.py [--steps 2000] [--batch-size 256] [--write]``; ``--write``
puts the table into docs/benchmarks.md (section "Neural priors").
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
from common import machine, write_section

from condgen.priors import MLP, DiffusionPrior, VPSchedule
from condgen.priors.counting import EvaluationCounter


def _data(n: int = 20_000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    radius = 2 + 0.2 * torch.randn(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], -1)


def plain_training(network, data, steps, batch_size, lr=1e-3, ema=0.999, clip=1.0) -> float:
    """A minimal denoising loop with the same loss, optimiser, clipping and EMA: seconds."""
    schedule = VPSchedule()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.0)
    averaged = [p.detach().clone() for p in network.parameters()]
    start = time.perf_counter()
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch_size,))]
        t = 1e-3 + (1 - 1e-3) * torch.rand(batch_size)
        alpha, sigma = schedule(t)
        x_t = alpha[:, None] * x + sigma[:, None] * torch.randn_like(x)
        weight = 1 + (alpha**2 / sigma**2).clamp(max=100)
        loss = (weight * (network(x_t, t) - x).pow(2).sum(-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(averaged, list(network.parameters()), 1 - ema)
    return time.perf_counter() - start


def condgen_training(network, data, steps, batch_size) -> float:
    prior = DiffusionPrior(network, event_shape=(2,))
    start = time.perf_counter()
    prior.fit(data, steps=steps, batch_size=batch_size, progress=False)
    return time.perf_counter() - start


def sampling(network, num_samples: int, steps: int) -> tuple[float, float, int]:
    """Seconds for prior.sample (Heun), seconds for the same number of raw network calls, NFE."""
    prior = DiffusionPrior(network, event_shape=(2,), sampler="heun", steps=steps)
    start = time.perf_counter()
    with EvaluationCounter() as counter:
        prior.sample((num_samples,))
    condgen_s = time.perf_counter() - start
    nfe = counter.evaluations // num_samples
    x, t = torch.randn(num_samples, 2), torch.rand(num_samples)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(nfe):
            network(x, t)
    return condgen_s, time.perf_counter() - start, nfe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = _data()
    network = MLP(2)
    rows = []
    plain = min(
        plain_training(copy.deepcopy(network), data, args.steps, args.batch_size)
        for _ in range(args.repeats)
    )
    ours = min(
        condgen_training(copy.deepcopy(network), data, args.steps, args.batch_size)
        for _ in range(args.repeats)
    )
    rows.append(("training (steps/s)", args.steps / ours, args.steps / plain, ours / plain))
    for num_samples in (1000, 10_000):
        runs = [sampling(network, num_samples, 32) for _ in range(args.repeats)]
        ours_s = min(r[0] for r in runs)
        plain_s = min(r[1] for r in runs)
        nfe = runs[0][2]
        rows.append(
            (
                f"sampling {num_samples} draws (ms/NFE, Heun, {nfe} NFE)",
                1e3 * ours_s / nfe,
                1e3 * plain_s / nfe,
                ours_s / plain_s,
            )
        )
    machine_line = machine()
    lines = [
        "## Neural priors",
        "",
        f"Machine: {machine_line}. Command: `python benchmarks/priors.py --steps {args.steps} "
        f"--batch-size {args.batch_size}` (best of {args.repeats}). MLP(2): 3 hidden layers "
        "of 256, time embedding 64.",
        "",
        "| measure | condgen | plain PyTorch | ratio (time condgen / plain) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {a:.3g} | {b:.3g} | {r:.3f} |" for name, a, b, r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.write:
        write_section(Path(__file__).parent.parent / "docs" / "benchmarks.md", table)


if __name__ == "__main__":
    main()

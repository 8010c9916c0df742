r"""A diffusers UNet trained on the 8x8 digits, shipped with condgen as
``condgen/evaluate/digits/digits-unet.pt``, and condgen's DDPM on it against diffusers'
``DDPMPipeline``.

Training follows diffusers' DDPM recipe, in a loop of this script's own: a ``UNet2DModel``
(1x8x8, block channels (8, 16), 41,609 parameters) predicts the noise of
``DDPMScheduler.add_noise`` at a uniform timestep (linear betas, 1000 timesteps), with the
mean squared error, AdamW and diffusers' cosine learning-rate schedule with warm-up, an
exponential moving average of the weights kept for sampling, on the 1437 training digits of
``condgen.evaluate.digits_data("train")`` scaled to [-1, 1]. The seeds are fixed (weights,
batches, noise). The scheduler is built with ``clip_sample=False``, as condgen's adapter does
not clip.

The comparison draws 2000 images from ``DDPMPipeline`` (1000 steps) and 2000 from the same
UNet through ``DiffusionPrior.from_diffusers``, both by ``sample_on_timesteps`` (the
scheduler's timesteps) and by ``prior.sample(sampler="ddpm", steps=999)``, from other seeds,
and reports condgen's classifier two-sample test between them (``condgen.evaluate.c2st``:
an MLP with two hidden layers of 640 units, 5-fold cross-validated accuracy; 0.5 when the
classifier cannot tell them apart). The pipeline's images are clamped to [-1, 1] by its
output; condgen's draws are clamped the same way.

Run from the repository root::

    python benchmarks/diffusers_digits.py           # trains and writes the shipped file
    python benchmarks/diffusers_digits.py --reuse   # compares the shipped file only
    python benchmarks/diffusers_digits.py --quick   # smoke run, printed only

The Markdown report is printed and written to ``docs/benchmarks.md`` (section
"diffusers UNet on the digits").
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import diffusers
import torch
from common import arguments, begin, heading, publish, reproduce
from diffusers.optimization import get_cosine_schedule_with_warmup

from condgen.evaluate import c2st, digits_data
from condgen.evaluate.digits import DIGITS_UNET, digits_unet_prior
from condgen.priors import DiffusionPrior
from condgen.priors.diffusers import sample_on_timesteps

SECTION = "diffusers UNet on the digits"


def make_unet() -> diffusers.UNet2DModel:
    r"""The UNet: two resolutions (8x8, 4x4) of one ResNet block each, attention in the
    middle block only."""
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


def make_scheduler() -> diffusers.DDPMScheduler:
    r"""diffusers' default DDPM scheduler (1000 linear betas from 1e-4 to 0.02, epsilon
    prediction), without clipping."""
    return diffusers.DDPMScheduler(clip_sample=False)


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, list[float], float]:
    r"""Trains the UNet on the training digits; returns its moving average, the losses and
    the seconds it took."""
    images = digits_data("train").reshape(-1, 1, 8, 8)
    scheduler = make_scheduler()
    timesteps = scheduler.config.num_train_timesteps
    torch.manual_seed(args.seed)
    unet = make_unet()
    average = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    warmup = min(200, args.train_steps // 10)
    rate = get_cosine_schedule_with_warmup(optimizer, warmup, args.train_steps)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    start = time.perf_counter()
    for step in range(args.train_steps):
        index = torch.randint(len(images), (args.batch_size,), generator=generator)
        noise = torch.randn(args.batch_size, 1, 8, 8, generator=generator)
        t = torch.randint(timesteps, (args.batch_size,), generator=generator)
        noisy = scheduler.add_noise(images[index], noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rate.step()
        decay = min(args.ema, (1 + step) / (10 + step))  # the usual warm-up of the average
        with torch.no_grad():
            for kept, current in zip(average.parameters(), unet.parameters(), strict=True):
                kept.lerp_(current, 1 - decay)
        losses.append(loss.item())
        if (step + 1) % 1000 == 0:
            print(f"step {step + 1}: loss {sum(losses[-1000:]) / 1000:.4f}", flush=True)
    return average.eval(), losses, time.perf_counter() - start


def pipeline_draws(prior: DiffusionPrior, steps: int, num: int, seed: int) -> torch.Tensor:
    r"""``DDPMPipeline`` draws of the prior's UNet, mapped back from [0, 1] to [-1, 1]."""
    scheduler = make_scheduler()
    pipeline = diffusers.DDPMPipeline(unet=prior.network.unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = pipeline(
            batch_size=num, generator=generator, num_inference_steps=steps, output_type="pt"
        ).images
    return images * 2 - 1


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    records: dict = {}
    if args.reuse:
        prior = digits_unet_prior(args.path)
    else:
        average, losses, seconds = train(args)
        records["loss"] = sum(losses[-500:]) / len(losses[-500:])
        records["train_s"] = seconds
        prior = DiffusionPrior.from_diffusers(average, make_scheduler(), sampler="ddpm", steps=100)
        args.path.parent.mkdir(parents=True, exist_ok=True)
        prior.save(args.path)
        prior = digits_unet_prior(args.path)  # what the file gives back
    records["size_kb"] = args.path.stat().st_size / 1024
    records["parameters"] = sum(p.numel() for p in prior.network.unet.parameters())
    scheduler = make_scheduler()
    scheduler.set_timesteps(args.inference_steps)
    n = args.draws
    reference, records["pipeline_s"] = timed(pipeline_draws, prior, args.inference_steps, n, 1)
    generator = torch.Generator().manual_seed(2)
    on_grid, records["grid_s"] = timed(
        sample_on_timesteps, prior, scheduler.timesteps, (n,), generator=generator
    )
    generator = torch.Generator().manual_seed(3)
    steps = len(scheduler.timesteps) - 1
    plain, records["sample_s"] = timed(
        prior.sample, (n,), sampler="ddpm", steps=steps, generator=generator
    )
    flat = reference.reshape(n, -1)
    for key, draws in (("grid", on_grid), ("sample", plain)):
        draws = draws.clamp(-1, 1).reshape(n, -1)
        value, seconds = timed(c2st, draws, flat, seed=0)
        records[f"c2st_{key}"], records["c2st_s"] = float(value), seconds
    test, train_digits = digits_data("test"), digits_data("train")
    m = len(test)
    records["c2st_test"] = float(c2st(flat[:m], test, seed=0))
    records["c2st_train"] = float(c2st(train_digits[:m], test, seed=0))
    records["steps"] = steps
    return records


def report(records: dict, args: argparse.Namespace, line: str) -> str:
    n, d = args.draws, 64
    sd = (0.25 / (2 * n)) ** 0.5
    lines = heading(SECTION, line, reproduce("diffusers_digits.py", args.argv))
    trained = (
        f"Trained here: {args.train_steps} steps of batches of {args.batch_size}, AdamW at "
        f"{args.lr} (cosine decay, warm-up), moving average {args.ema}, "
        f"{records['train_s']:.0f} s; final loss (noise MSE, last 500 steps) "
        f"{records['loss']:.4f}. "
        if "train_s" in records
        else "The shipped file, not retrained. "
    )
    lines += [
        "A diffusers `UNet2DModel` (1x8x8, block channels (8, 16), "
        f"{records['parameters']:,} parameters) with diffusers' default `DDPMScheduler` (1000 "
        "linear betas, epsilon prediction, `clip_sample=False`), trained on the 1437 training "
        "digits in [-1, 1] with diffusers' DDPM recipe (noise MSE at uniform timesteps) "
        f"and shipped as `condgen/evaluate/digits/digits-unet.pt` ({records['size_kb']:.0f} "
        f"KB; `condgen.evaluate.digits.digits_unet_prior()`). {trained}",
        "",
        f"{n} draws from diffusers' `DDPMPipeline` ({args.inference_steps} steps) against "
        f"{n} through condgen's adapter `DiffusionPrior.from_diffusers` on the same UNet, "
        "other seeds: `sample_on_timesteps` (DDPM along the scheduler's timesteps, from "
        f"N(0, I)) and `prior.sample(sampler='ddpm', steps={records['steps']})` (condgen's "
        f"own grid, {records['steps']} steps uniform in t from 1 to 1e-5"
        + (", within 0.01 of each integer timestep" if records["steps"] == 999 else "")
        + "). C2ST: "
        "`condgen.evaluate.c2st`, the cross-validated accuracy (5 folds) of an MLP classifier "
        f"(two hidden layers of {10 * d} units, ReLU, Adam, 300 epochs, inputs standardised) "
        "telling the two sets apart; 0.5 when it cannot. Its sampling sd at 0.5 is about "
        f"{sd:.3f} ({2 * n} test points in all). Both sides clamped to [-1, 1] (the "
        "pipeline's output is). Timings on a shared 2-core machine, one thread: indicative "
        "only.",
        "",
        "| condgen draws | C2ST vs DDPMPipeline | time (s) |",
        "|---|---:|---:|",
        f"| `sample_on_timesteps(prior, scheduler.timesteps)` | {records['c2st_grid']:.3f} "
        f"| {records['grid_s']:.0f} |",
        f"| `prior.sample(sampler='ddpm', steps={records['steps']})` "
        f"| {records['c2st_sample']:.3f} | {records['sample_s']:.0f} |",
        f"| (DDPMPipeline itself) | | {records['pipeline_s']:.0f} |",
        "",
        f"One C2ST of {2 * n} draws took {records['c2st_s']:.0f} s. How good the prior is: "
        "the C2ST of 360 pipeline draws against the 360 test digits is "
        f"{records['c2st_test']:.3f}, and of 360 training digits against them "
        f"{records['c2st_train']:.3f} (the best a model of the data can do).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=2000, help="draws of each side")
    parser.add_argument("--inference-steps", type=int, default=1000)
    parser.add_argument("--path", type=Path, default=DIGITS_UNET, help="the prior file")
    parser.add_argument("--reuse", action="store_true", help="compare the file, no training")

    def quick(_: argparse.Namespace) -> dict:
        folder = Path(tempfile.mkdtemp())
        return {"train_steps": 50, "draws": 200, "inference_steps": 20, "path": folder / "u.pt"}

    args = arguments(parser, argv, quick, threads=1)
    line, start = begin(args)
    publish(report(measure(args), args, line), args, start)


if __name__ == "__main__":
    main()

"""How fast one autoencoder training step runs, with and without the training recipe's memory layout and optimiser.

One step = forward, the L2 + edge-weighted loss, backward and AdamW on a batch of 64x64 images, exactly as
``train_autoencoder`` does it. Two variants, alternating round by round so that the drift of a shared machine hits
both alike:

* ``plain``: contiguous tensors, the per-tensor AdamW loop (what the recipe did before);
* ``recipe``: channels_last weights and batches, and the fused AdamW kernel (what ``train_autoencoder`` does now).

Prints the median milliseconds per step of each and their ratio (the median of the per-round ratios). A shared
machine's speed drifts by tens of percent within minutes, so read the ratio, not the milliseconds. Measured figures:
docs/benchmarks.md.

Run: ``.venv/bin/python benchmarks/autoencoder_throughput.py [--rounds 6] [--steps 120] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ctxdiff_from_scratch.autoencoder import Autoencoder, AutoencoderConfig
from ctxdiff_from_scratch.train_autoencoder import TrainConfig, autoencoder_loss

WARMUP_STEPS = 10


def milliseconds_per_step(recipe: bool, profile: str, batch_size: int, steps: int) -> float:
    """Train a fresh autoencoder for ``WARMUP_STEPS + steps`` steps on random images; time the last ``steps``."""
    torch.manual_seed(0)
    layout = torch.channels_last if recipe else torch.contiguous_format
    model = Autoencoder(AutoencoderConfig.profile(profile)).to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=recipe or None)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, model.config.image_size, model.config.image_size, generator=generator)
    config = TrainConfig(profile=profile)  # ShapesWorld's recipe: its loss, KL weight and edge weight
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            start = time.perf_counter()
        batch = images[torch.randint(0, len(images), (batch_size,), generator=generator)]
        loss, _ = autoencoder_loss(model, batch.contiguous(memory_format=layout), config.kl_weight,
                                   config.edge_weight, generator, config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of both variants")
    parser.add_argument("--steps", type=int, default=120, help="timed steps per variant and round")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--profile", default="cpu", help="autoencoder profile")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times = {"plain": [], "recipe": []}
    for round_index in range(args.rounds):
        order = ("plain", "recipe") if round_index % 2 == 0 else ("recipe", "plain")  # who goes first alternates
        for name in order:
            times[name].append(milliseconds_per_step(name == "recipe", args.profile, args.batch_size, args.steps))
    for name, values in times.items():
        print(f"{name:>6}: median {statistics.median(values):.1f} ms/step, fastest {min(values):.1f} "
              f"({args.rounds} rounds of {args.steps} steps, batch {args.batch_size}, {args.threads} threads)")
    ratio = statistics.median(p / r for p, r in zip(times["plain"], times["recipe"]))
    print(f"recipe speed-up (median of per-round ratios plain / recipe): {ratio:.2f}x")


if __name__ == "__main__":
    main()

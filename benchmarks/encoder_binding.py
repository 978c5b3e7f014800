"""Does a frozen ShapesWorld image encoder keep which colour belongs to which shape? A probe answers in ~2 minutes.

The diffusion model can only paint each shape in its context colour if the context tokens say which colour goes with
which shape class. This script freezes an image encoder, encodes styled images, and trains two small probes to read
"the colour of the circles" (and of every other class the image shows; 10 colours) from the tokens:

* ``linear``: one linear layer on the mean token (what the contrastive loss sees);
* ``attention``: one learned query per class attends over the tokens and a linear layer reads the colour (what the
  UNet's cross-attention can do).

It prints their accuracy on unseen train-split images (same style distribution) and on test-split styles (held-out
colour pairings, which no probe trained on train styles can name reliably). Use it as a cheap check of an encoder
recipe before a 45-minute denoiser run, but not as the only one: a better probe score did not give the denoiser a
better context gain (docs/experiments.md, section 3). Measured figures: docs/benchmarks.md.

Run: ``.venv/bin/python benchmarks/encoder_binding.py [--encoders data/checkpoints/shapes] [--threads 2]``.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ctxdiff_from_scratch.data.shapes import COLOURS, SHAPE_CLASSES, ShapesWorld
from ctxdiff_from_scratch.device import seed_everything
from ctxdiff_from_scratch.encoders import ImageEncoder

COLOUR_NAMES = tuple(COLOURS)
ABSENT = -1  # label of a class the image does not show (ignored by the loss and the accuracy)


@torch.no_grad()
def encoded_dataset(encoder: ImageEncoder, split: str, seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N, N_v, D_v) of the styled images ``seeds`` of ``split``, and labels (N, classes): the colour index of
    each class the image shows, ABSENT for the others."""
    world = ShapesWorld(split, size=encoder.config.image_size)
    images, labels = [], []
    for seed in tqdm(seeds, desc=f"encoding {split} images", leave=False):
        image, style, classes = world.styled_sample(seed)
        images.append(image)
        labels.append([COLOUR_NAMES.index(style.fill(c)[0]) if c in classes else ABSENT for c in SHAPE_CLASSES])
    tokens = torch.cat([encoder(batch).tokens for batch in torch.stack(images).split(256)])  # (N, N_v, D_v)
    return tokens, torch.tensor(labels)


class LinearProbe(nn.Module):
    """colour logits (B, classes, colours) = W mean_n(tokens) + b."""

    def __init__(self, dim: int):
        super().__init__()
        self.read = nn.Linear(dim, len(SHAPE_CLASSES) * len(COLOUR_NAMES))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # (B, N, D) -> (B, D) -> (B, classes * colours) -> (B, classes, colours)
        return self.read(tokens.mean(1)).view(len(tokens), len(SHAPE_CLASSES), len(COLOUR_NAMES))


class AttentionProbe(nn.Module):
    """One learned query per class: a_c = softmax(q_c K^T / sqrt(D)), colour logits = W (a_c V)."""

    def __init__(self, dim: int):
        super().__init__()
        self.queries = nn.Parameter(0.1 * torch.randn(len(SHAPE_CLASSES), dim))
        self.keys, self.values = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.read = nn.Linear(dim, len(COLOUR_NAMES))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("cd,bnd->bcn", self.queries, self.keys(tokens)) / tokens.shape[-1] ** 0.5
        pooled = torch.einsum("bcn,bnd->bcd", scores.softmax(-1), self.values(tokens))  # (B, classes, D)
        return self.read(pooled)  # (B, classes, colours)


def train_probe(probe: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, steps: int,
                generator: torch.Generator) -> nn.Module:
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    for _ in tqdm(range(steps), desc=f"training {type(probe).__name__}", leave=False):
        index = torch.randint(0, len(tokens), (256,), generator=generator)
        logits = probe(tokens[index])  # (B, classes, colours)
        loss = F.cross_entropy(logits.flatten(0, 1), labels[index].flatten(), ignore_index=ABSENT)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe


@torch.no_grad()
def accuracy(probe: nn.Module, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of (image, shown class) pairs whose colour the probe names."""
    shown = labels != ABSENT
    return (probe(tokens).argmax(-1) == labels)[shown].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="data/checkpoints/shapes", help="folder with image_encoder.*")
    parser.add_argument("--train-images", type=int, default=6000, help="train-split images the probes learn on")
    parser.add_argument("--eval-images", type=int, default=1000, help="images per evaluation set")
    parser.add_argument("--probe-steps", type=int, default=1500, help="Adam steps per probe (batch 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="also write the accuracies to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = seed_everything(args.seed)
    encoder = ImageEncoder.from_pretrained(args.encoders)
    train = encoded_dataset(encoder, "train", range(args.train_images))
    unseen = range(10**6, 10**6 + args.eval_images)  # train-split seeds far beyond the probes' own
    evaluations = {"train styles (unseen images)": encoded_dataset(encoder, "train", unseen),
                   "test styles": encoded_dataset(encoder, "test", range(args.eval_images))}
    results = {}
    for probe_class in (LinearProbe, AttentionProbe):
        probe = train_probe(probe_class(train[0].shape[-1]), *train, args.probe_steps, generator)
        results[probe_class.__name__] = {name: round(accuracy(probe, *data), 4) for name, data in evaluations.items()}
    print(f"colour-of-class accuracy of probes on {args.encoders}'s image tokens "
          f"({args.train_images} training images; guessing: about 1/{len(COLOUR_NAMES) - 1})")
    for probe_name, row in results.items():
        print(f"  {probe_name:15s} " + "   ".join(f"{name}: {value:.3f}" for name, value in row.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"encoders": args.encoders, "accuracy": results, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()

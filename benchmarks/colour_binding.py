"""Does a trained ShapesWorld pipeline paint each shape in *its own* colour, or only the right palette?

The forward tasks' error with context is mostly on the shapes (docs/experiments.md, section 14). This
script splits it. For each forward-task test episode it generates the target (k = 3, DDIM 25, the checkpoint's
guidance) in the chosen settings, and for every target shape with at least ``evaluate.MIN_SHAPE_PIXELS`` visible
pixels compares the mean colour of the generated shape with the ground truth's mean colours of the shapes in the same
image:

* **bound**: the generated mean colour is nearest the shape's own ground-truth colour; **swapped**: it is nearer the
  colour of another shape of another class (only shapes whose image holds such a shape, coloured at least
  ``evaluate.MIN_COLOUR_GAP`` apart, are counted). **Chance** is the score of picking one of the image's shape
  colours at random.
* the squared error split into background pixels, the shapes' mean-colour error and what is left inside the shapes
  (textures, outlines), each as a share of the per-pixel MSE of the whole image.

A model can learn the palette from the context (the mean-colour distance falls) without learning which shape wears
which colour (the bound share stays near chance); measured figures: docs/experiments.md, section 14. The scoring is
``evaluate.shape_colour_scores``; ``eval`` reports the bound share too (``colour_binding``), this script adds the
error split.

Run: ``.venv/bin/python benchmarks/colour_binding.py --checkpoint data/checkpoints/shapes [--settings C none]``
(5-10 s per setting on 2 threads, plus loading the pipeline).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ctxdiff_from_scratch import ContextDiffusionPipeline
from ctxdiff_from_scratch.data.shapes import FORWARD_TASKS, ShapesWorld
from ctxdiff_from_scratch.evaluate import (SETTINGS, EvalConfig, episode_seeds, generate_episodes,
                                           shape_colour_scores, target_rasters)


def empty_scores() -> dict:
    """Totals of ``shape_colour_scores`` over many images start here."""
    return {"bound": 0, "swapped": 0, "chance": 0.0, "distances": [], "background": 0.0, "shape_colour": 0.0,
            "within_shape": 0.0}


def measure(pipe, world: ShapesWorld, setting: str, episodes: int, progress: bool = True) -> dict:
    """Binding rates and the error split of ``setting`` over ``episodes`` test episodes per forward task."""
    config = EvalConfig(episodes=episodes, settings=(setting,), progress=False)  # DDIM 25, the checkpoint's guidance
    totals, pixels = empty_scores(), 0
    for task in tqdm(FORWARD_TASKS, desc=setting, disable=not progress):
        seeds = episode_seeds(config)
        batch = [world.episode(seed, task=task) for seed in seeds]
        made = generate_episodes(pipe, batch, setting, config)  # (N, 3, H, W)
        rasters = target_rasters(world, seeds, task, config.k)
        for pred, episode, raster in zip(made, batch, rasters):
            for key, value in shape_colour_scores(pred, episode.target, raster.ids, raster.classes).items():
                totals[key] = totals[key] + value
            pixels += raster.ids.size
    counted = totals["bound"] + totals["swapped"]
    return {"shapes_counted": counted, "bound": totals["bound"] / max(counted, 1),
            "chance": totals["chance"] / max(counted, 1),
            "mean_colour_distance": float(np.mean(totals["distances"])),
            "mse": {key: totals[key] / pixels for key in ("background", "shape_colour", "within_shape")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("data/checkpoints/shapes"))
    parser.add_argument("--settings", nargs="+", default=["C", "none"], choices=list(SETTINGS))
    parser.add_argument("--episodes", type=int, default=48, help="test episodes per forward task")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = ContextDiffusionPipeline.from_pretrained(args.checkpoint)
    world = ShapesWorld("test")
    results = {setting: measure(pipe, world, setting, args.episodes) for setting in args.settings}
    for setting, r in results.items():
        mse = r["mse"]
        print(f"{setting:5s} own colour {r['bound']:.2f} (chance {r['chance']:.2f}, {r['shapes_counted']} shapes), "
              f"mean-colour distance {r['mean_colour_distance']:.3f}; MSE background {mse['background']:.4f}, "
              f"shape colour {mse['shape_colour']:.4f}, within shapes {mse['within_shape']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "episodes": args.episodes,
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()

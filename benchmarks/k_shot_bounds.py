"""How much more does a ShapesWorld episode tell about its target with k = 3 context images than with k = 1?

The paper's Table 3 finds that more context images help (win rate 24.9% -> 55.1% from 1 to 3 shots). A model can only
gain from more images if they carry more of what the target needs. ShapesWorld draws its contexts so that *together*
they show every shape class of the target (context i shows classes i, i + k, i + 2k, ...; ``data/shapes.py``): one
image at k = 1 shows them all, three images at k = 3 show them spread out, with more random other shapes around.

This script measures the information, not a model. For each k it scores, on the same targets, hand-made answers
that read the context perfectly (``binding_regression.flat_answers``; flat colours):

* **palette only**: every shape painted with the mean colour of the context's shapes (shape-pixel MSE);
* **perfect binding**: each shape painted with the mean colour of its own class in the context (shape-pixel MSE);
* **flat oracle**: perfect binding on the shapes and the mean colour of the context's background pixels elsewhere
  (RMSE over the whole image, the square root of the mean per-image MSE, as ``eval`` reports).

If perfect binding scores the same at k = 1 and k = 3, the extra images add no colour information about the target
and a model's k-shot gain can only come from seeing the same colours more often. The target of an episode does not
depend on k (it is drawn first), so the k columns are paired.

Run: ``.venv/bin/python benchmarks/k_shot_bounds.py [--k 1 2 3 5] [--episodes 64] [--split train]`` (a few seconds
per k; no model involved). Measured table: docs/experiments.md, section 29.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from binding_regression import flat_answers, hand_made_bounds
from ctxdiff_from_scratch.data.shapes import FORWARD_TASKS, ShapesWorld
from ctxdiff_from_scratch.data.shapes_layout import rasterize
from ctxdiff_from_scratch.tune_guidance import UNSEEN_FIRST_SEED  # unseen train episodes


def labelled_batch(world: ShapesWorld, seeds: list[int], task: str, k: int) -> dict:
    """The episodes' targets and contexts with every pixel's shape class, as ``hand_made_bounds`` reads them."""
    episodes, context_classes = zip(*(world.labelled_episode(seed, task=task, k=k) for seed in seeds))
    target_classes = np.stack([rasterize(world.episode_spec(seed, task=task, k=k).target_layout, world.size).classes
                               for seed in seeds])  # (B, H, W), -1 on the background
    batch = {"target": torch.stack([e.target for e in episodes]),  # (B, 3, H, W)
             "context": torch.stack([e.context for e in episodes]),  # (B, k, 3, H, W)
             "context_classes": list(context_classes),  # B x (k, H, W)
             "target_classes": torch.from_numpy(target_classes.astype(np.int64))}
    batch["shape_mask"] = batch["target_classes"] >= 0  # (B, H, W) bool
    return batch


def flat_oracle_rmse(batch: dict) -> float:
    """RMSE of painting each target shape in its class's mean context colour, the rest in the context's background."""
    target, mask = batch["target"], batch["shape_mask"]
    pred = flat_answers(batch)[1]  # perfect binding on the shapes
    for i, (context, classes) in enumerate(zip(batch["context"], batch["context_classes"])):
        labels = torch.from_numpy(classes.astype(np.int64))  # (k, H, W)
        background = context.permute(1, 0, 2, 3)[:, labels < 0].mean(dim=1)  # (k, 3, H, W) -> (3, k, H, W) -> (3,)
        pred[i][:, ~mask[i]] = background[:, None]
    per_image = (pred - target).pow(2).flatten(1).mean(dim=1)  # (B, 3, H, W) -> (B,)
    return round(per_image.mean().sqrt().item(), 4)


def k_shot_bounds(world: ShapesWorld, seeds: list[int], tasks: list[str], ks: list[int]) -> dict:
    """{k: {"palette_only", "perfect_binding", "flat_oracle_rmse"}}, pooled over ``tasks`` (equal episodes each)."""
    results = {}
    for k in tqdm(ks, desc="k"):
        scores = [dict(hand_made_bounds(batch), flat_oracle_rmse=flat_oracle_rmse(batch))
                  for batch in (labelled_batch(world, seeds, task, k) for task in tasks)]
        results[k] = {name: round(float(np.mean([s[name] for s in scores])), 4) for name in scores[0]}
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--tasks", nargs="+", choices=FORWARD_TASKS, default=list(FORWARD_TASKS))
    parser.add_argument("--episodes", type=int, default=64, help="episodes per task")
    parser.add_argument("--first-seed", type=int, default=UNSEEN_FIRST_SEED)
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.episodes < 1 or min(args.k) < 1:
        parser.error("--episodes and every --k must be >= 1")
    seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    results = k_shot_bounds(ShapesWorld(args.split), seeds, args.tasks, args.k)
    print(f"{args.split}, {args.episodes} episodes x {len(args.tasks)} forward tasks; shape-pixel MSE and flat RMSE")
    print("k   palette only   perfect binding   flat oracle RMSE")
    for k, scores in results.items():
        print(f"{k:<3} {scores['palette_only']:<14.4f} {scores['perfect_binding']:<17.4f} "
              f"{scores['flat_oracle_rmse']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "seeds": [seeds[0], seeds[-1]], "tasks": args.tasks,
                                        "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

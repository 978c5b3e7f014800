"""Do out-of-domain queries fail for their polarity? RMSE with each query as it is and inverted (1 - query).

Every map ShapesWorld trains on draws light lines or regions on a dark ground (edges: white on black); a hand-drawn
sketch is dark ink on white paper. If a model reads the query's ground as the image's background, it paints a sketch's
images dark, and inverting the query, which turns the sketch into light lines on black, should bring its error back
to that of an in-domain query. This probe generates each task's episodes in setting C (context alone, the
checkpoint's own guidance) twice, with the query as it is and inverted (for a model that reads example pairs, the
context's sources too), and prints both RMSEs beside the mean-colour baseline and each query's mean brightness.

Run: ``.venv/bin/python benchmarks/query_polarity.py --checkpoint data/checkpoints/shapes
[--checkpoint data/checkpoints/shapes-pd] [--tasks sketch2img scribble2img canny2img] [--episodes 64]``
(about 10 s per checkpoint, task and polarity on 2 threads at 64 episodes).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ctxdiff_from_scratch import ContextDiffusionPipeline
from ctxdiff_from_scratch.data import collate_episodes
from ctxdiff_from_scratch.data.shapes import TASKS, ShapesWorld
from ctxdiff_from_scratch.evaluate import (EvalConfig, episode_sources, generate_episodes, mean_colour_baseline, rmse,
                                           with_checkpoint_guidance)
from ctxdiff_from_scratch.tune_guidance import UNSEEN_FIRST_SEED  # unseen train episodes

OUT_OF_DOMAIN = ("sketch2img", "scribble2img", "canny2img")


def polarity_rmse(pipe, world: ShapesWorld, task: str, config: EvalConfig, k: int) -> dict[str, float]:
    """RMSE in setting C with the query as it is and inverted, the mean-colour baseline's, the queries' brightness."""
    seeds = list(range(config.first_seed, config.first_seed + config.episodes))
    episodes = [world.episode(seed, task=task, k=k) for seed in seeds]
    sources = episode_sources(pipe, world, seeds, task, k)  # (N, k, 3, H, W) or None
    batch = collate_episodes(episodes)
    inverted = [dataclasses.replace(ep, query=1 - ep.query) for ep in episodes]
    return {"as_is": rmse(generate_episodes(pipe, episodes, "C", config, sources), batch.target),
            "inverted": rmse(generate_episodes(pipe, inverted, "C", config, None if sources is None else 1 - sources),
                             batch.target),
            "mean_colour": rmse(mean_colour_baseline(batch.context), batch.target),
            "query_brightness": float(batch.query.mean())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a ShapesWorld model folder (Context Diffusion or the PD-style baseline); repeatable")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(OUT_OF_DOMAIN))
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--first-seed", type=int, default=UNSEEN_FIRST_SEED)
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="train (default): unseen train episodes, for choosing designs; test: report once")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.k < 1 or args.steps < 1:
        parser.error("--episodes, --k and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for checkpoint in tqdm(args.checkpoint, desc="checkpoints"):
        pipe = ContextDiffusionPipeline.from_pretrained(checkpoint)
        if pipe.model.config.world != "shapes":
            parser.error(f"{checkpoint}: this probe reads ShapesWorld models; its world is {pipe.model.config.world}")
        config = with_checkpoint_guidance(pipe, EvalConfig(steps=args.steps, episodes=args.episodes,
                                                           settings=("C",), progress=False, split=args.split,
                                                           first_seed=args.first_seed))
        world = ShapesWorld(args.split, size=pipe.image_size)
        results[checkpoint] = {task: polarity_rmse(pipe, world, task, config, args.k) for task in args.tasks}
        for task, scores in results[checkpoint].items():
            print(f"{checkpoint}  {task} (query brightness {scores['query_brightness']:.2f}): RMSE C, query as is "
                  f"{scores['as_is']:.4f}, inverted {scores['inverted']:.4f}; mean colour {scores['mean_colour']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "first_seed": args.first_seed, "episodes": args.episodes,
                                        "k": args.k, "steps": args.steps, "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

"""Does the denoiser itself bind colours to shapes? Its conditional mean, scored on the shapes' pixels.

At the last timestep t = T - 1 the noisy latent z_t is pure noise and says nothing about z_0, so the clean latent a
model predicts there (``schedule.predict_x0``) is its estimate of the conditional mean E[z_0 | query, context]. Decoded
and scored by the MSE over the target's shape pixels (``evaluate.shape_pixel_errors``), it measures what the network
has learned to take from the context, with no sampler, steps or guidance in between. References on 48 unseen
seg2img train episodes (docs/experiments.md, sections 19 and 21): painting every shape with the mean colour of the
context's shapes ("palette only") scores 0.094, each shape with the mean colour of its own class in the context
("perfect binding") 0.041. A conditional mean above palette only has not learned binding.

Run: ``.venv/bin/python benchmarks/conditional_mean.py --checkpoint data/checkpoints/shapes [--checkpoint runs/x]
[--tasks seg2img edge2img] [--episodes 48]`` (a few seconds per checkpoint and task on 2 threads).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ctxdiff_from_scratch import ContextDiffusionPipeline
from ctxdiff_from_scratch.data import collate_episodes
from ctxdiff_from_scratch.data.shapes import FORWARD_TASKS, ShapesWorld
from ctxdiff_from_scratch.evaluate import shape_masks, shape_pixel_errors
from ctxdiff_from_scratch.tune_guidance import UNSEEN_FIRST_SEED  # unseen train episodes


@torch.no_grad()
def conditional_mean_errors(model, world: ShapesWorld, task: str, seeds: list[int], k: int) -> dict[str, float]:
    """Shape-pixel MSE of the decoded x_0 prediction at t = T - 1, with the context and without (no prompt)."""
    episodes = collate_episodes([world.episode(seed, task=task, k=k) for seed in seeds]).to(model.device)
    cond = model.encode_conditions(episodes.query, episodes.context, episodes.context_mask,
                                   ["" for _ in seeds] if model.text_encoder is not None else None)
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(len(seeds), *model.latent_shape, generator=generator).to(model.device)  # (B, C, h, w)
    t = model.schedule.num_train_timesteps - 1
    mask = shape_masks(world, seeds, task, k).to(model.device)  # (B, H, W) bool
    errors = {}
    for name, drop_context in (("context", False), ("none", True)):
        output = model.predict(z_t, t, cond, drop_prompt=True, drop_context=drop_context)
        images = model.decode_latents(model.schedule.predict_x0(output, z_t, t)).clamp(0, 1)  # (B, 3, H, W)
        squared, count = shape_pixel_errors(images, episodes.target, mask)
        errors[name] = float(squared.sum() / count.sum())
    return errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a ShapesWorld Context Diffusion model folder; repeat to compare")
    parser.add_argument("--tasks", nargs="+", choices=FORWARD_TASKS, default=["seg2img"])
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--first-seed", type=int, default=UNSEEN_FIRST_SEED)
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="train (default): unseen train episodes, for choosing designs; test: report once")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.k < 1:
        parser.error("--episodes and --k must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    results = {}
    for checkpoint in tqdm(args.checkpoint, desc="checkpoints"):
        model = ContextDiffusionPipeline.from_pretrained(checkpoint).model
        if model.config.world != "shapes" or model.reads_pairs:
            parser.error(f"{checkpoint}: this probe reads ShapesWorld Context Diffusion models (the PD-style "
                         "baseline's context is example pairs)")
        world = ShapesWorld(args.split, size=model.config.image_size)
        results[checkpoint] = {task: conditional_mean_errors(model, world, task, seeds, args.k) for task in args.tasks}
        for task, errors in results[checkpoint].items():
            print(f"{checkpoint}  {task}: shape-pixel MSE of the conditional mean, context {errors['context']:.4f}, "
                  f"none {errors['none']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "seeds": [seeds[0], seeds[-1]], "k": args.k,
                                        "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

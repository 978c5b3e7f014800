"""Choose a checkpoint's default context guidance s_c on unseen *train* episodes and write it to ``sampling.json``.

    python -m ctxdiff_from_scratch tune-guidance --checkpoint data/checkpoints/shapes

The best guidance scale depends on the model (the shipped ShapesWorld model scores best at s_c = 1.5-2, the
GlyphWorld one at 3-4), so it is a property of the checkpoint, chosen like any hyperparameter: on data the model never
trained on and that no reported number uses. Each candidate s_c generates the *same* episodes from the *same* noise
in the C setting (context, no prompt) -- train-split episodes with seeds from ``first_seed`` = 1,000,000, far beyond
the training pool's seeds 0 .. pool_size - 1 -- and is scored by the world's metric:

* ShapesWorld: RMSE to the target over the forward tasks (edge2img, seg2img, depth2img), lower is better;
* GlyphWorld: mean glyph IoU with the target, higher is better.

The best candidate is written to ``<checkpoint>/sampling.json`` with every candidate's score, and from then on the
pipeline, ``eval`` and ``make demo`` use it whenever no scale is given (``pipeline.load_guidance_defaults``). The
prompt scale s_p is not tuned (the C setting has no prompt): it keeps the pipeline's default.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .data import GlyphWorld, ShapesWorld
from .data.shapes import FORWARD_TASKS
from .evaluate import EvalConfig, evaluate_glyphs, evaluate_shapes
from .pipeline import DEFAULT_GUIDANCE, GUIDANCE_FIELDS, SAMPLING_FILE, check_guidance

UNSEEN_FIRST_SEED = 1_000_000  # train episodes from here on are not in any training pool


@dataclass
class TuneConfig:
    """What ``tune_guidance`` tries and on how many episodes.

    scales: candidate s_c values; episodes: per task (ShapesWorld: each forward task) -- the same for every candidate
    first_seed: seed of the first train episode (default: beyond every training pool); steps, seed: as in ``eval``
    """

    scales: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0)
    episodes: int = 64
    first_seed: int = UNSEEN_FIRST_SEED
    steps: int = 25
    seed: int = 0
    batch_size: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        self.scales = tuple(check_guidance(s, "each candidate scale") for s in self.scales)
        if not self.scales:
            raise ValueError("give at least one candidate guidance scale.")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"candidate scales must differ, got {self.scales}.")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}.")


def validation_score(pipe, world, scale: float, config: TuneConfig) -> float:
    """The C setting's score at context guidance ``scale`` on ``world``'s episodes: forward-task RMSE (ShapesWorld)
    or mean glyph IoU (GlyphWorld)."""
    settings = EvalConfig(episodes=config.episodes, steps=config.steps, guidance_scale_context=scale,
                          seed=config.seed, batch_size=config.batch_size, settings=("C",), progress=False,
                          split=world.split, first_seed=config.first_seed)
    if isinstance(world, ShapesWorld):
        return evaluate_shapes(pipe, settings, tasks=FORWARD_TASKS, world=world)["rmse"]["forward"]["C"]
    return evaluate_glyphs(pipe, settings, world=world)["iou"]["font2font"]["C"]


def tune_guidance(pipe, world, config: TuneConfig | None = None) -> dict:
    """Score every candidate s_c (``validation_score``) and pick the best.

    Returns {"guidance_scale_context": best, "guidance_scale_prompt": the pipeline's current s_p, "chosen_by": {...}}:
    what ``sampling.json`` holds; "chosen_by" records the metric, the episodes and every candidate's score.
    """
    config = config or TuneConfig()
    shapes = isinstance(world, ShapesWorld)
    scores = {scale: validation_score(pipe, world, scale, config)
              for scale in tqdm(config.scales, desc="tune s_c", disable=not config.progress)}
    # RMSE: lower is better; IoU: higher is better. Ties go to the candidate listed first.
    best = (min if shapes else max)(scores, key=scores.get)
    metric = ("RMSE over the forward tasks, setting C (lower is better)" if shapes
              else "mean glyph IoU, setting C (higher is better)")
    return {"guidance_scale_context": best, "guidance_scale_prompt": pipe.guidance_defaults[GUIDANCE_FIELDS[1]],
            "chosen_by": {"metric": metric, "split": world.split, "first_seed": config.first_seed,
                          "episodes_per_task": config.episodes, "steps": config.steps, "seed": config.seed,
                          "scores": {f"{scale:g}": score for scale, score in scores.items()}}}


def write_sampling_defaults(folder: str | Path, chosen: dict) -> Path:
    """Write ``chosen`` (``tune_guidance``'s result) to ``<folder>/sampling.json``; return the path."""
    path = Path(folder) / SAMPLING_FILE
    path.write_text(json.dumps(chosen, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m ctxdiff_from_scratch tune-guidance``: choose s_c on unseen train episodes, write sampling.json."""
    defaults = TuneConfig()
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch tune-guidance",
                                     description="Choose a checkpoint's default context guidance s_c on unseen train "
                                                 "episodes (never the test split) and write it to sampling.json in "
                                                 "the checkpoint folder, where the pipeline, eval and demo read it.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. data/checkpoints/shapes")
    parser.add_argument("--scales", type=float, nargs="+", default=list(defaults.scales),
                        help=f"candidate s_c values (default: {' '.join(f'{s:g}' for s in defaults.scales)})")
    parser.add_argument("--episodes", type=int, default=defaults.episodes,
                        help=f"episodes per task (default: {defaults.episodes})")
    parser.add_argument("--first-seed", type=int, default=defaults.first_seed,
                        help=f"seed of the first train episode (default: {defaults.first_seed}, beyond every "
                             "training pool)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="DDIM steps (default: 25)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="noise seed (default: 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the scores, write nothing")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    config = TuneConfig(scales=tuple(args.scales), episodes=args.episodes, first_seed=args.first_seed,
                        steps=args.steps, seed=args.seed, progress=not args.no_progress)

    from .pipeline import ContextDiffusionPipeline

    folder = Path(args.checkpoint)
    pipe = ContextDiffusionPipeline.from_pretrained(folder)
    if pipe.model.config.world == "shapes":
        world = ShapesWorld(split="train", size=pipe.image_size)
    else:
        world = GlyphWorld(split="train", size=pipe.image_size, progress=config.progress)
    chosen = tune_guidance(pipe, world, config)
    for scale, score in chosen["chosen_by"]["scores"].items():
        print(f"s_c = {scale:>4}: {score:.4f}")
    best = chosen["guidance_scale_context"]
    print(f"best s_c = {best:g} by {chosen['chosen_by']['metric']} (without sampling.json: {DEFAULT_GUIDANCE:g})")
    if not args.dry_run:
        print(f"wrote {write_sampling_defaults(folder, chosen)}")
    return chosen

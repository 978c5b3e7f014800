"""The main job (`make demo`): what the shipped models generate, and the worlds they learned from, as PNG figures.

    python -m ctxdiff_from_scratch demo --out outputs

For every world whose trained model is in ``data/checkpoints/<world>/``, one figure of test episodes, a row each:

    query | context 1..k | output in each setting | ground truth

with the settings of the paper's ablations (evaluate.py): C+P (context and prompt), C (context only) and P (prompt
only) for ShapesWorld; C and none for GlyphWorld, which has no prompts. Under each output: its RMSE to the ground
truth (ShapesWorld) or its glyph IoU (GlyphWorld). All settings of an episode start from the same noise, so the
columns differ only by what the model was given; the same seed gives the same figures.

The episode galleries (one row per task or font, both splits) are written too, and need no trained model.
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import torch

from .data import WORLDS, Episode, GlyphWorld, ShapesWorld, collate_episodes
from .data.shapes import OUT_OF_DOMAIN_TASKS
from .evaluate import (EvalConfig, SamplingSettings, generate_episodes, glyph_iou, mean_colour_baseline,
                       per_image_mse, rmse, with_checkpoint_guidance)
from .plotting import episode_figure, image_grid, set_plot_style

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
# The settings that differ in each world (without prompts, C+P would be C and P would be none).
SETTINGS_SHOWN = {"shapes": ("C+P", "C", "P"), "glyphs": ("C", "none")}
TRAINED_FILE = "denoiser.safetensors"


@dataclass
class DemoConfig(SamplingSettings):
    """What the sample figures show and how they are generated (the sampling settings are those of ``eval``).

    checkpoints: folder holding one model folder per world (``shapes/``, ``glyphs/``)
    seed: episode seeds start here and all noise is seeded with it
    glyph_episodes: GlyphWorld rows (ShapesWorld shows one test episode per task)
    """

    checkpoints: Path = DEFAULT_CHECKPOINTS
    glyph_episodes: int = 6
    settings: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SETTINGS_SHOWN))


def _glyph_world(split: str) -> GlyphWorld:
    """The Debian training fonts (bundled in data/fonts/, else installed); without either (a wheel install, no apt)
    matplotlib's fonts, for display only."""
    try:
        return GlyphWorld(split=split, progress=False)
    except FileNotFoundError as err:
        warnings.warn(f"{err} Showing matplotlib's own fonts instead (display only, never used for training).")
        return GlyphWorld(fonts=Path(matplotlib.get_data_path()) / "fonts" / "ttf", progress=False)


def write_episode_gallery(out_dir: str | Path, seed: int = 0, k: int = 3) -> list[Path]:
    """Save one PNG per world: a row per task (ShapesWorld) or per font (GlyphWorld), for both splits."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    set_plot_style()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in ("train", "test"):
        shapes = ShapesWorld(split=split)
        episodes = [shapes.episode(seed, task=task, k=k) for task in shapes.tasks]
        fig = episode_figure(episodes)
        fig.suptitle(f"ShapesWorld ({split} split): one episode per task, k={k}", y=1.0)
        written.append(out_dir / f"shapes_{split}_episodes.png")
        fig.savefig(written[-1], bbox_inches="tight")
        plt.close(fig)

        glyphs = _glyph_world(split)
        episodes = [glyphs.episode(seed + i, k=k) for i in range(6)]
        fig = episode_figure(episodes, row_labels=[f"seed {seed + i}" for i in range(6)])
        fig.suptitle(f"GlyphWorld ({split} split): query in DejaVu Sans -> target font, k={k}", y=1.0)
        written.append(out_dir / f"glyphs_{split}_episodes.png")
        fig.savefig(written[-1], bbox_inches="tight")
        plt.close(fig)
    return written


def demo_episodes(world: str, config: DemoConfig, size: int = 64) -> tuple[list[Episode], list[str]]:
    """The test episodes of a world's figure and their row labels: one per task (ShapesWorld, out-of-domain tasks
    starred), or ``glyph_episodes`` fonts (GlyphWorld)."""
    if world == "shapes":
        shapes = ShapesWorld(split="test", size=size)
        episodes = [shapes.episode(config.seed, task=task, k=config.k) for task in shapes.tasks]
        return episodes, [f"{ep.task}*" if ep.task in OUT_OF_DOMAIN_TASKS else ep.task for ep in episodes]
    glyphs = _glyph_world("test")
    seeds = range(config.seed, config.seed + config.glyph_episodes)
    return [glyphs.episode(s, k=config.k) for s in seeds], [f"seed {s}" for s in seeds]


def generate_settings(pipe, episodes: list[Episode], settings: tuple[str, ...], config: DemoConfig
                      ) -> dict[str, torch.Tensor]:
    """Each setting's outputs for ``episodes`` -> {setting: (N, 3, H, W)}, all from the same starting noise."""
    eval_config = EvalConfig(**config.sampling_settings(), episodes=len(episodes), batch_size=len(episodes),
                             settings=settings, progress=False)
    return {setting: generate_episodes(pipe, episodes, setting, eval_config) for setting in settings}


def per_image_scores(world: str, outputs: torch.Tensor, target: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The figure's metric per image -> (name, (N,)): RMSE_i = sqrt(MSE_i) for ShapesWorld, glyph IoU for glyphs."""
    if world == "glyphs":
        return "IoU", glyph_iou(outputs, target)
    return "RMSE", per_image_mse(outputs, target).sqrt()


def sample_figure(world: str, episodes: list[Episode], labels: list[str], outputs: dict[str, torch.Tensor],
                  config: DemoConfig):
    """Rows = episodes; columns: query | context 1..k | one output per setting (with its score) | ground truth."""
    target = torch.stack([ep.target for ep in episodes])  # N x (3, H, W) -> (N, 3, H, W)
    scores = {s: per_image_scores(world, out, target) for s, out in outputs.items()}
    rows, titles = [], []
    for i, ep in enumerate(episodes):
        rows.append([ep.query, *ep.context, *(out[i] for out in outputs.values()), ep.target])
        titles.append(["query", *[f"context {j + 1}" for j in range(ep.k)],
                       *[f"{s}\n{name} {values[i]:.3f}" for s, (name, values) in scores.items()], "ground truth"])
    fig = image_grid(rows, titles, labels, cell=(1.3, 1.6))
    guidance = f"s_c={config.guidance_scale_context:g}" + (
        f", s_p={config.guidance_scale_prompt:g}" if world == "shapes" else "")
    note = "; * = out-of-domain task, never trained on" if world == "shapes" else ""
    fig.suptitle(f"{'ShapesWorld' if world == 'shapes' else 'GlyphWorld'} test episodes, k={config.k}: "
                 f"{config.sampler.upper()} {config.steps} steps, {guidance}, seed {config.seed}{note}",
                 y=1.0, va="bottom")
    return fig


def summary_line(world: str, episodes: list[Episode], outputs: dict[str, torch.Tensor]) -> str:
    """One printed line: each setting's score over the figure's episodes, next to the trivial baselines."""
    batch = collate_episodes(episodes)
    if world == "glyphs":
        columns = {**outputs, "query glyph": batch.query}
        values = {c: glyph_iou(out, batch.target).mean().item() for c, out in columns.items()}
        metric = "mean glyph IoU (higher is better)"
    else:
        columns = {**outputs, "mean colour": mean_colour_baseline(batch.context, batch.context_mask)}
        values = {c: rmse(out, batch.target) for c, out in columns.items()}
        metric = "RMSE (lower is better)"
    shown = ", ".join(f"{c} {v:.3f}" for c, v in values.items())
    return (f"{world}: {metric} over these {len(episodes)} episodes: {shown} (the last one is a trivial baseline; "
            f"`python -m ctxdiff_from_scratch eval` measures many more)")


def missing_model_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot be loaded as a trained model, or None when it holds one."""
    if not (folder / TRAINED_FILE).is_file():
        return (f"{folder} has no {TRAINED_FILE} (the trained denoiser). Train one with `python -m "
                f"ctxdiff_from_scratch train --world {folder.name} ...` (see the README), or restore the shipped "
                "checkpoints from the repository")
    if not (folder / "autoencoder.json").is_file():
        return (f"{folder} has no autoencoder.json (the frozen autoencoder). Train it with `python -m "
                f"ctxdiff_from_scratch autoencoder --world {folder.name} --out {folder}`, or restore the shipped files")
    return None


def write_sample_figures(out_dir: str | Path, config: DemoConfig | None = None) -> list[Path]:
    """For each world with a trained model in ``config.checkpoints``: generate its figure (see the module docstring)
    and save ``<world>_samples.png``. A world without one is reported and skipped. Returns the paths written."""
    from .pipeline import ContextDiffusionPipeline

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = config or DemoConfig()
    set_plot_style()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for world in WORLDS:
        folder = Path(config.checkpoints) / world
        reason = missing_model_reason(folder)
        if reason is not None:
            print(f"{world}: no sample figure: {reason}.")
            continue
        pipe = ContextDiffusionPipeline.from_pretrained(folder)
        used = with_checkpoint_guidance(pipe, config)  # this checkpoint's default scales where config has None
        episodes, labels = demo_episodes(world, used, size=pipe.image_size)
        outputs = generate_settings(pipe, episodes, used.settings[world], used)
        fig = sample_figure(world, episodes, labels, outputs, used)
        written.append(out_dir / f"{world}_samples.png")
        fig.savefig(written[-1], bbox_inches="tight")
        plt.close(fig)
        print(summary_line(world, episodes, outputs))
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    """``python -m ctxdiff_from_scratch demo``: sample figures from the shipped models, then the episode galleries."""
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch demo",
                                     description="Write the demo figures to a folder: test episodes generated by the "
                                                 "trained models in the C+P / C / P settings, and episode galleries.")
    parser.add_argument("--out", default="outputs", help="folder for the figures (default: outputs)")
    parser.add_argument("--checkpoints", default=str(defaults.checkpoints),
                        help="folder with one model folder per world (default: the shipped data/checkpoints)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="episode and noise seed (default: 0)")
    parser.add_argument("--k", type=int, default=defaults.k, help="context images per episode (default: 3)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="DDIM steps (default: 25)")
    args = parser.parse_args(argv)
    config = DemoConfig(checkpoints=Path(args.checkpoints), seed=args.seed, k=args.k, steps=args.steps)
    written = write_sample_figures(args.out, config) + write_episode_gallery(args.out, seed=args.seed, k=args.k)
    for path in written:
        print(f"wrote {path}")
    return written

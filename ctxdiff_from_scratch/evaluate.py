"""Evaluation in the paper's settings (Sec. 4), and the ``eval`` / ``sample`` commands.

Four settings, as in the paper's ablations, always with the query:

    C+P  visual context and prompt      C  context only      P  prompt only      none  neither

Metrics, on the **test** split of a world:

* RMSE to the ground-truth target, pixels in [0, 1], as Prompt Diffusion reports it: RMSE = sqrt(mean_i MSE_i), the
  square root of the mean per-image mean squared error (so every image counts equally).
* The trivial baseline "paint the context's mean colour" next to it: a model that only beats "none" may have learned
  nothing the mean colour does not already give (docs/experiments.md, section 16).
* GlyphWorld: mean glyph IoU of the ink (pixels darker than 0.5: glyphs are dark on white, see ``data/glyphs.py``)
  against the trivial baseline of returning the query glyph, drawn in the reference font, on both test splits:
  held-out families of the training packages, and text fonts from packages never trained on.
* ShapesWorld forward tasks, two views of whether the context was *used*: the share of episodes in which a setting
  beats the mean-colour baseline (``wins_over_mean_colour``: an average can hide a model that loses on most
  episodes), and the MSE on the shapes' pixels alone (``shape_mse``; the mask is the target layout's shapes, which
  seg2img's query shows), where a model must paint each shape in its own colour from the context rather than
  the background that dominates the whole-image RMSE.
* ShapesWorld forward tasks, colour binding (``colour_binding``): the share of shapes whose generated mean colour is
  nearest their own colour rather than another shape's in the same image (the palette alone does not give it).
* ``k_shot_scaling``: RMSE as the number of context images k grows.
* ``goal_rows``: the in-context goals of the project (one line each, measured value against its target).

Every setting sees the same episodes and, batch by batch, the same starting noise, so the settings are compared on
paired samples. Results are plain dicts (JSON-ready) and ``format_table`` prints them. Sampling settings (e.g. the
guidance scales) are chosen on unseen *train* episodes (``EvalConfig.split`` / ``eval --split train --first-seed
1000000``), never on the test split that reports the numbers. ``eval --protocol`` runs the published protocols for
several labelled checkpoints instead, with a bootstrap interval on every number (``experiments.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import Episode, GlyphWorld, ShapesWorld, collate_episodes
from .data.shapes import FORWARD_TASKS, OUT_OF_DOMAIN_TASKS, REVERSE_TASKS
from .data.shapes_layout import rasterize

# setting -> (give the context, give the prompt)
SETTINGS: dict[str, tuple[bool, bool]] = {"C+P": (True, True), "C": (True, False), "P": (False, True),
                                          "none": (False, False)}
TASK_GROUPS = {"forward": FORWARD_TASKS, "reverse": REVERSE_TASKS, "out_of_domain": OUT_OF_DOMAIN_TASKS}
INK_THRESHOLD = 0.5  # GlyphWorld: ink is a pixel darker than this (glyphs are dark on white)
MEAN_COLOUR = "baseline_mean_colour"
QUERY_GLYPH = "baseline_query_glyph"
TEXT_FONTS_ROW = "font2font_text_fonts"  # GlyphWorld's second test split: text fonts never trained on
MIN_SHAPE_PIXELS = 20  # colour binding: smaller visible parts of a shape give a noisy mean colour
MIN_COLOUR_GAP = 0.15  # colour binding: RGB distance below which two shapes' colours count as the same


@dataclass
class SamplingSettings:
    """How the pipeline is called, shared by ``eval`` (``EvalConfig``) and ``make demo`` (``demo.DemoConfig``).

    k: context images per episode (>= 1); seed: batch i starts from noise seeded with seed + i
    steps, guidance_scale_context, guidance_scale_prompt, sampler: passed to the pipeline; a guidance scale left as
        None is the checkpoint's default (its sampling.json, else 3): see :func:`with_checkpoint_guidance`
    """

    k: int = 3
    steps: int = 25
    guidance_scale_context: float | None = None
    guidance_scale_prompt: float | None = None
    sampler: str = "ddim"
    seed: int = 0

    def sampling_settings(self) -> dict:
        """Just these fields, as keyword arguments for another config that shares them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingSettings)}


def with_checkpoint_guidance(pipe, settings):
    """A copy of ``settings`` (any SamplingSettings) whose guidance scales left as None are ``pipe``'s defaults, so
    that what a result records is the scale that was used."""
    scale_context, scale_prompt = pipe.resolve_guidance(settings.guidance_scale_context,
                                                        settings.guidance_scale_prompt)
    return dataclasses.replace(settings, guidance_scale_context=scale_context, guidance_scale_prompt=scale_prompt)


@dataclass
class EvalConfig(SamplingSettings):
    """How generations are made for evaluation: the sampling settings, and

    episodes: episodes per task, seeds first_seed .. first_seed + episodes - 1; batch_size: episodes generated at once
    split: "test" (every reported number) or "train", to choose sampling settings without looking at the test split:
        train episodes with seeds far beyond the training pool (which uses seeds 0 .. pool_size - 1) are unseen
    settings: which of ``SETTINGS`` to run
    """

    episodes: int = 64
    batch_size: int = 16
    settings: tuple[str, ...] = tuple(SETTINGS)
    progress: bool = True
    split: str = "test"
    first_seed: int = 0

    def __post_init__(self) -> None:
        self.settings = tuple(self.settings)
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}.")
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}.")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}.")
        if self.episodes < 1 or self.batch_size < 1:
            raise ValueError(f"episodes and batch_size must be >= 1, got {self.episodes} and {self.batch_size}.")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 to evaluate in-context generation (and the mean-colour baseline), "
                             f"got {self.k}; the 'P' and 'none' settings already show the model without context.")


# --- metrics ---------------------------------------------------------------------------------------------------------
def per_image_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE_i = mean over the pixels and channels of image i of (pred - target)^2: (B, 3, H, W) x 2 -> (B,)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B, 3, H, W) -> (B, 3*H*W) -> (B,)


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """RMSE = sqrt(mean_i MSE_i), pixels in [0, 1] (Prompt Diffusion's convention)."""
    return math.sqrt(per_image_mse(pred, target).mean().item())


def mean_colour_baseline(context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The trivial baseline: every pixel painted in the mean colour of the episode's real context images.

    context: (B, k, 3, H, W); context_mask: (B, k) bool (None: all real). Returns (B, 3, H, W).
    """
    if context_mask is None:
        context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    count = context_mask.sum(dim=1)  # (B,)
    if (count == 0).any():
        raise ValueError("the mean-colour baseline needs at least one context image in every episode.")
    pixels = context.flatten(3).mean(dim=3)  # (B, k, 3, H, W) -> (B, k, 3, H*W) -> (B, k, 3)
    pixels = pixels.masked_fill(~context_mask[:, :, None], 0.0)  # padded slots may hold anything: replace them
    # colour_b = sum_j m_bj mean_pixels(context_bj) / sum_j m_bj
    colour = pixels.sum(dim=1) / count[:, None]  # (B, k, 3) -> (B, 3)
    return colour[:, :, None, None].expand(-1, -1, *context.shape[-2:]).clone()  # (B, 3) -> (B, 3, H, W)


def shape_pixel_errors(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared errors summed over the masked pixels of each image, and the number of values summed.

    pred, target: (B, 3, H, W); mask: (B, H, W) bool. Returns ((B,), (B,)); their pooled ratio is the shape-pixel MSE.
    """
    squared = (pred.float() - target.float()).pow(2).sum(dim=1)  # (B, 3, H, W) -> (B, H, W): summed over channels
    return (squared * mask).flatten(1).sum(dim=1), 3 * mask.flatten(1).sum(dim=1)  # (B, H, W) -> (B,)


def target_rasters(world: ShapesWorld, seeds: Sequence[int], task: str, k: int) -> list:
    """The rasterised target layout of each episode (shape ids and classes per pixel; episodes carry no raster)."""
    return [rasterize(world.episode_spec(seed, task=task, k=k).target_layout, world.size) for seed in seeds]


def shape_masks(world: ShapesWorld, seeds: Sequence[int], task: str, k: int) -> torch.Tensor:
    """(N, H, W) bool: the pixels of each episode's target that belong to a shape (the target layout's classes)."""
    return torch.from_numpy(np.stack([r.classes >= 0 for r in target_rasters(world, seeds, task, k)]))


def shape_colour_scores(pred: torch.Tensor, target: torch.Tensor, ids: np.ndarray, classes: np.ndarray) -> dict:
    """Does each generated shape wear *its own* colour, or another shape's? One image against its target.

    For every target shape with at least MIN_SHAPE_PIXELS visible pixels, the generated mean colour is compared with
    the true mean colours of the shapes in the same image: **bound** when it is nearest the shape's own, **swapped**
    when it is nearer a shape of another class whose colour differs by more than MIN_COLOUR_GAP (shapes without
    such a rival are not counted). **chance** sums 1 / (1 + rivals): the score of picking one of the candidate
    colours at random. The squared error is split into background, the shapes' mean-colour error and what is left
    within the shapes (texture, outline).

    pred, target: (3, H, W) in [0, 1]; ids: (H, W) shape index per pixel, -1 on the background; classes: (H, W).
    Returns {"bound", "swapped", "chance", "distances": [own-colour distance per shape], "background",
    "shape_colour", "within_shape"}: counts and sums, to be totalled over many images.
    """
    error = ((pred - target) ** 2).mean(dim=0).numpy()  # (3, H, W) -> (H, W)
    masks = {j: ids == j for j in np.unique(ids[ids >= 0]) if (ids == j).sum() >= MIN_SHAPE_PIXELS}
    truth = {j: target[:, torch.from_numpy(m)].mean(dim=1) for j, m in masks.items()}  # (3, H, W) -> (3, n) -> (3,)
    cls = {j: classes[m][0] for j, m in masks.items()}
    scores = {"bound": 0, "swapped": 0, "chance": 0.0, "distances": [], "background": float(error[ids < 0].sum()),
              "shape_colour": 0.0, "within_shape": 0.0}
    for j, mask in masks.items():
        made = pred[:, torch.from_numpy(mask)].mean(dim=1)
        own = float((made - truth[j]).norm())
        scores["distances"].append(own)
        colour_error = float(((made - truth[j]) ** 2).mean()) * int(mask.sum())
        scores["shape_colour"] += colour_error
        scores["within_shape"] += float(error[mask].sum()) - colour_error
        rivals = [o for o in masks if cls[o] != cls[j] and float((truth[o] - truth[j]).norm()) > MIN_COLOUR_GAP]
        if rivals:
            nearest_rival = min(float((made - truth[o]).norm()) for o in rivals)
            scores["bound" if own < nearest_rival else "swapped"] += 1
            scores["chance"] += 1.0 / (1 + len(rivals))
    return scores


def binding_counts(preds: torch.Tensor, targets: torch.Tensor, rasters: Sequence) -> np.ndarray:
    """(N, 3): per image of a batch (N, 3, H, W) and its rasters, the shapes painted nearest their own colour, the
    shapes counted (bound + swapped) and the chance sum of :func:`shape_colour_scores`."""
    rows = []
    for pred, target, raster in zip(preds, targets, rasters):
        scores = shape_colour_scores(pred, target, raster.ids, raster.classes)
        rows.append((scores["bound"], scores["bound"] + scores["swapped"], scores["chance"]))
    return np.array(rows, dtype=np.float64).reshape(len(rows), 3)


def colour_binding(preds: torch.Tensor, targets: torch.Tensor, rasters: Sequence) -> tuple[int, int, float]:
    """(bound, counted, chance sum) of :func:`shape_colour_scores` over a batch (N, 3, H, W) and its rasters."""
    bound, counted, chance = binding_counts(preds, targets, rasters).sum(axis=0)  # (N, 3) -> (3,)
    return int(bound), int(counted), float(chance)


def ink(images: torch.Tensor, threshold: float = INK_THRESHOLD) -> torch.Tensor:
    """Glyph pixels: (B, 3, H, W) dark-on-white images -> (B, H, W) bool, True where the grey value < threshold."""
    return images.float().mean(dim=1) < threshold  # (B, 3, H, W) -> (B, H, W)


def glyph_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = INK_THRESHOLD) -> torch.Tensor:
    """IoU_i = |ink(pred_i) & ink(target_i)| / |ink(pred_i) | ink(target_i)| -> (B,); 1 when both are blank."""
    a, b = ink(pred, threshold), ink(target, threshold)
    intersection = (a & b).flatten(1).sum(dim=1).float()  # (B, H, W) -> (B,)
    union = (a | b).flatten(1).sum(dim=1).float()  # (B, H, W) -> (B,)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


# --- generation ------------------------------------------------------------------------------------------------------
def episode_seeds(config: EvalConfig) -> range:
    """The episode seeds an evaluation uses: ``config.episodes`` of them from ``config.first_seed``."""
    return range(config.first_seed, config.first_seed + config.episodes)


def episode_sources(pipe, world, seeds: Sequence[int], task: str | None, k: int) -> torch.Tensor | None:
    """The context sources (N, k, 3, H, W) of episodes ``seeds`` when ``pipe``'s model reads example pairs (the
    Prompt-Diffusion-style baseline), else None."""
    if not pipe.model.reads_pairs:
        return None
    return torch.stack([world.context_sources(seed, task=task, k=k) for seed in seeds])  # N x (k, 3, H, W)


def generate_episodes(pipe, episodes: Sequence[Episode], setting: str, config: EvalConfig,
                      sources: torch.Tensor | None = None) -> torch.Tensor:
    """Generate every episode's output in ``setting`` -> (N, 3, H, W), in batches of ``config.batch_size``;
    ``sources`` (N, k, 3, H, W): the context's source views, for a model that reads pairs (:func:`episode_sources`)."""
    use_context, use_prompt = SETTINGS[setting]
    outputs = []
    for index, start in enumerate(range(0, len(episodes), config.batch_size)):
        batch = collate_episodes(list(episodes[start:start + config.batch_size]))
        pair_sources = None if sources is None or not use_context else sources[start:start + config.batch_size]
        outputs.append(pipe(query=batch.query,
                            context=batch.context if use_context else None, context_sources=pair_sources,
                            prompt=batch.prompts if use_prompt else None,
                            num_inference_steps=config.steps, guidance_scale_context=config.guidance_scale_context,
                            guidance_scale_prompt=config.guidance_scale_prompt, seed=config.seed + index,
                            sampler=config.sampler, progress=False))
    return torch.cat(outputs)  # n_batches x (b, 3, H, W) -> (N, 3, H, W)


def _pooled_rmse(mses: Sequence[torch.Tensor]) -> float:
    """RMSE over the union of several groups of per-image MSEs."""
    return math.sqrt(torch.cat(list(mses)).mean().item())


def world_settings(world, config: EvalConfig) -> tuple[str, ...]:
    """The settings that differ in this world: without prompts, P is none and C+P is C, so those two are left out."""
    if isinstance(world, GlyphWorld):
        return tuple(s for s in config.settings if not SETTINGS[s][1])
    return config.settings


def evaluate_shapes(pipe, config: EvalConfig | None = None, tasks: Sequence[str] | None = None,
                    world: ShapesWorld | None = None) -> dict:
    """RMSE on ShapesWorld episodes (``config.split``: test unless chosen) per task and setting, the mean-colour
    baseline, and group summaries; on the forward tasks also the share of episodes that beat the baseline and the
    shape-pixel MSE.

    Returns {"world", "split", "config", "rmse": {row: {column: value}}, "wins_over_mean_colour": {row: {setting:
    share}}, "shape_mse": {row: {column: value}}, "colour_binding": {row: {setting or "chance": share}},
    "context_gain_forward", "context_to_none": {row: ratio}}: rows are the tasks and the groups forward / reverse /
    out_of_domain (pooled over their images; all tables but "rmse" have forward rows only); columns the settings and
    the baseline. ``colour_binding`` is the share of shapes painted nearest their own colour
    (:func:`shape_colour_scores`). ``context_gain_forward`` = 1 - RMSE(C) / RMSE(none) on the forward tasks and
    ``context_to_none`` = RMSE(C) / RMSE(none) per forward row (when both were run).
    """
    config = with_checkpoint_guidance(pipe, config or EvalConfig())
    world = world or ShapesWorld(split=config.split, size=pipe.image_size)
    tasks = tuple(tasks or world.tasks)
    columns = (*config.settings, MEAN_COLOUR)
    mses: dict[str, dict[str, torch.Tensor]] = {}
    shape_errors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    bindings: dict[str, dict[str, tuple[int, int, float]]] = {}
    runs = [(task, setting) for task in tasks for setting in config.settings]
    bar = tqdm(total=len(runs), desc="eval shapes", **({} if config.progress else {"disable": True}))
    for task in tasks:
        seeds = episode_seeds(config)
        episodes = [world.episode(seed, task=task, k=config.k) for seed in seeds]
        sources = episode_sources(pipe, world, seeds, task, config.k)
        batch = collate_episodes(episodes)
        outputs = {MEAN_COLOUR: mean_colour_baseline(batch.context, batch.context_mask)}
        for setting in config.settings:
            bar.set_postfix_str(f"{task} {setting}")
            outputs[setting] = generate_episodes(pipe, episodes, setting, config, sources)
            bar.update()
        mses[task] = {c: per_image_mse(outputs[c], batch.target) for c in columns}
        if task in FORWARD_TASKS:
            rasters = target_rasters(world, seeds, task, config.k)
            mask = torch.from_numpy(np.stack([r.classes >= 0 for r in rasters]))  # (N, H, W): the shapes' pixels
            shape_errors[task] = {c: shape_pixel_errors(outputs[c], batch.target, mask) for c in columns}
            bindings[task] = {s: colour_binding(outputs[s], batch.target, rasters) for s in config.settings}
    bar.close()
    forward = [t for t in FORWARD_TASKS if t in tasks]
    table = {task: {c: _pooled_rmse([mses[task][c]]) for c in columns} for task in tasks}
    for group, members in TASK_GROUPS.items():
        present = [t for t in members if t in tasks]
        if present:
            table[group] = {c: _pooled_rmse([mses[t][c] for t in present]) for c in columns}
    rows = {task: [task] for task in forward} | ({"forward": forward} if forward else {})
    # share of episodes with MSE_i(setting) < MSE_i(mean colour), over the row's episodes
    wins = {row: {s: torch.cat([mses[t][s] < mses[t][MEAN_COLOUR] for t in members]).float().mean().item()
                  for s in config.settings} for row, members in rows.items()}
    # shape-pixel MSE = sum of squared errors on shape pixels / number of those values, pooled over the row's images
    shape_mse = {row: {c: (sum(shape_errors[t][c][0].sum() for t in members)
                           / sum(shape_errors[t][c][1].sum() for t in members)).item() for c in columns}
                 for row, members in rows.items()}
    # share of counted shapes painted nearest their own colour; chance: picking a candidate colour at random
    binding = {row: {s: sum(bindings[t][s][0] for t in members) / max(1, sum(bindings[t][s][1] for t in members))
                     for s in config.settings} for row, members in rows.items()}
    for row, members in rows.items():
        counted = sum(bindings[t][config.settings[0]][1] for t in members)
        binding[row]["chance"] = sum(bindings[t][config.settings[0]][2] for t in members) / max(1, counted)
    results = {"world": "shapes", "split": world.split, "config": dataclasses.asdict(config), "rmse": table,
               "wins_over_mean_colour": wins, "shape_mse": shape_mse, "colour_binding": binding}
    if "forward" in table and {"C", "none"} <= set(config.settings):
        results["context_gain_forward"] = 1.0 - table["forward"]["C"] / table["forward"]["none"]
        # RMSE with context / with nothing, per forward task
        results["context_to_none"] = {row: table[row]["C"] / table[row]["none"] for row in rows}
    return results


def evaluate_glyphs(pipe, config: EvalConfig | None = None, world: GlyphWorld | None = None) -> dict:
    """RMSE and glyph IoU on GlyphWorld fonts, against the query-glyph and mean-colour baselines.

    Without ``world``, on ``config.split``; the test split has two rows: ``font2font``, the held-out families of the
    training packages (unseen designs of the kinds trained on), and ``font2font_text_fonts``, the ``test-text``
    split's everyday text fonts from packages never trained on, where returning the query glyph is hard to beat.
    Only the settings without a prompt are run (GlyphWorld has none). Returns {"world", "split", "config",
    "rmse": {row: {column: value}}, "iou": {row: {column: value}}}.
    """
    config = with_checkpoint_guidance(pipe, config or EvalConfig())
    worlds = {"font2font": world or GlyphWorld(split=config.split, size=pipe.image_size, progress=config.progress)}
    if world is None and config.split == "test":
        worlds[TEXT_FONTS_ROW] = GlyphWorld(split="test-text", size=pipe.image_size, progress=config.progress)
    settings = world_settings(worlds["font2font"], config)
    columns = (*settings, QUERY_GLYPH, MEAN_COLOUR)
    table: dict[str, dict[str, dict[str, float]]] = {"rmse": {}, "iou": {}}
    for row, row_world in worlds.items():
        episodes = [row_world.episode(seed, k=config.k) for seed in episode_seeds(config)]
        sources = episode_sources(pipe, row_world, episode_seeds(config), None, config.k)
        batch = collate_episodes(episodes)
        outputs = {QUERY_GLYPH: batch.query, MEAN_COLOUR: mean_colour_baseline(batch.context, batch.context_mask)}
        for setting in tqdm(settings, desc=f"eval glyphs ({row})", **({} if config.progress else {"disable": True})):
            outputs[setting] = generate_episodes(pipe, episodes, setting, config, sources)
        table["rmse"][row] = {c: rmse(outputs[c], batch.target) for c in columns}
        table["iou"][row] = {c: glyph_iou(outputs[c], batch.target).mean().item() for c in columns}
    return {"world": "glyphs", "split": worlds["font2font"].split, "config": dataclasses.asdict(config), **table}


def k_shot_scaling(pipe, world, task: str | None = None, ks: Sequence[int] = (1, 2, 3, 4, 5), setting: str = "C",
                   config: EvalConfig | None = None) -> dict[int, float]:
    """RMSE to the target for each number of context images k, on the same episodes (the query and target of an
    episode do not depend on k in either world)."""
    config = with_checkpoint_guidance(pipe, config or EvalConfig())
    scores = {}
    for k in tqdm(ks, desc="k-shot", **({} if config.progress else {"disable": True})):
        episodes = [world.episode(seed, task=task, k=k) for seed in episode_seeds(config)]
        target = torch.stack([ep.target for ep in episodes])  # N x (3, H, W) -> (N, 3, H, W)
        sources = episode_sources(pipe, world, episode_seeds(config), task, k)
        scores[int(k)] = rmse(generate_episodes(pipe, episodes, setting, config, sources), target)
    return scores


def goal_rows(results: dict) -> list[dict]:
    """The in-context goals of the project, read off an ``evaluate_*`` result: one dict per goal with "goal",
    "value", "target", "met" (None when the result lacks what the goal needs, e.g. ``--k-shot 1 3``) and "signed"
    (the value is a difference)."""
    rows = []

    def add(goal: str, value: float | None, target: str, met: bool | None, signed: bool = False) -> None:
        rows.append({"goal": goal, "value": value, "target": target, "met": met, "signed": signed})

    if results["world"] == "shapes":
        for task, ratio in results.get("context_to_none", {}).items():
            add(f"{task}: RMSE with context / with nothing", ratio, "<= 0.50", ratio <= 0.50)
        for task, wins in results.get("wins_over_mean_colour", {}).items():
            if "C" in wins:
                add(f"{task}: share of episodes where C beats the mean colour", wins["C"], ">= 0.95", wins["C"] >= 0.95)
        seg = results.get("shape_mse", {}).get("seg2img", {}).get("C")
        if seg is not None:
            add("seg2img: MSE on the shapes' pixels, C", seg, "<= 0.05", seg <= 0.05)
        bound = results.get("colour_binding", {}).get("forward", {}).get("C")
        if bound is not None:
            add("forward: share of shapes in their own colour, C", bound, ">= 0.75", bound >= 0.75)
        for task in ("sketch2img", "scribble2img"):
            rmse_row = results["rmse"].get(task, {})
            if "C" in rmse_row:
                margin = rmse_row["C"] - rmse_row[MEAN_COLOUR]
                add(f"{task}: RMSE(C) - RMSE(mean colour)", margin, "< 0", margin < 0, signed=True)
    else:
        iou = results["iou"]
        if "C" in iou.get("font2font", {}):
            add("glyph IoU, held-out families, C", iou["font2font"]["C"], ">= 0.60", iou["font2font"]["C"] >= 0.60)
        if "C" in iou.get(TEXT_FONTS_ROW, {}):
            gain = iou[TEXT_FONTS_ROW]["C"] - iou[TEXT_FONTS_ROW][QUERY_GLYPH]
            add("glyph IoU - return the query glyph, text fonts never trained on", gain, ">= +0.15", gain >= 0.15,
                signed=True)
    k_shot = {int(k): v for k, v in results.get("k_shot", {}).items()}
    if {1, 3} <= set(k_shot):
        ratio = k_shot[3] / k_shot[1]
        add(f"{results.get('k_shot_task')}: RMSE at k = 3 / at k = 1", ratio, "<= 0.90", ratio <= 0.90)
    else:
        add("RMSE at k = 3 / at k = 1", None, "<= 0.90 (measure with --k-shot 1 3)", None)
    return rows


def format_table(results: dict) -> str:
    """The metric tables of an ``evaluate_*`` result as aligned text, one table per metric."""
    titles = {"rmse": "RMSE", "iou": "glyph IoU", "shape_mse": "MSE on the shapes' pixels",
              "wins_over_mean_colour": "share of episodes beating the mean-colour baseline",
              "colour_binding": "share of shapes in their own colour"}
    lines = []
    for metric, title in titles.items():
        if not results.get(metric):
            continue
        rows = results[metric]
        columns = list(next(iter(rows.values())))
        width = max(len(r) for r in rows) + 2
        lines.append(f"{title} ({results['world']}, {results['split']} split)")
        lines.append(" " * width + "".join(f"{c:>{max(len(c), 8) + 2}}" for c in columns))
        for row, values in rows.items():
            lines.append(f"{row:<{width}}" + "".join(f"{values[c]:>{max(len(c), 8) + 2}.4f}" for c in columns))
        lines.append("")
    if "context_gain_forward" in results:
        lines.append(f"forward tasks, RMSE reduction from context (1 - C / none): "
                     f"{results['context_gain_forward']:.1%}")
    if "k_shot" in results:
        lines.append("RMSE vs k: " + ", ".join(f"k={k}: {v:.4f}" for k, v in results["k_shot"].items()))
    goals = goal_rows(results)
    if goals:
        width = max(len(g["goal"]) for g in goals) + 2
        lines += ["", "goals"]
        for g in goals:
            value = "not measured" if g["value"] is None else f"{g['value']:{'+' if g['signed'] else ''}.3f}"
            verdict = {True: "met", False: "not met", None: ""}[g["met"]]
            lines.append(f"  {g['goal']:<{width}}{value:>13}  target {g['target']}  {verdict}".rstrip())
    return "\n".join(lines).rstrip()


# --- commands --------------------------------------------------------------------------------------------------------
def _add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. data/checkpoints/shapes")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default: 25)")
    parser.add_argument("--guidance-context", type=float, default=None,
                        help="context guidance s_c (default: the checkpoint's sampling.json, else 3)")
    parser.add_argument("--guidance-prompt", type=float, default=None,
                        help="prompt guidance s_p (default: the checkpoint's sampling.json, else 3)")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler (default: ddim)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: get_device())")


def _load_pipeline(args):
    from .device import get_device
    from .pipeline import ContextDiffusionPipeline

    return ContextDiffusionPipeline.from_pretrained(args.checkpoint, device=get_device(args.device))


def _world_name(pipe, requested: str) -> str:
    return pipe.model.config.world if requested == "auto" else requested


def main_eval(argv: list[str] | None = None):
    """``python -m ctxdiff_from_scratch eval``: evaluate a checkpoint on its world's test split, write a JSON; with
    ``--protocol NAME``, run that published protocol for labelled checkpoints instead (``experiments.main``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--protocol" or arg.startswith("--protocol=") for arg in argv):
        from .experiments import main as main_experiments

        return main_experiments(argv)
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch eval",
                                     description="Evaluate a checkpoint on the test split in the C+P, C, P and none "
                                                 "settings (RMSE; glyph IoU for GlyphWorld) next to trivial baselines.",
                                     epilog="With --protocol quick|full it runs a published protocol for labelled "
                                            "checkpoints instead, with a bootstrap interval on every number: see "
                                            "`eval --protocol quick --help`.")
    _add_generation_arguments(parser)
    parser.add_argument("--world", choices=("auto", "shapes", "glyphs"), default="auto",
                        help="world to evaluate on (default: the checkpoint's)")
    parser.add_argument("--episodes", type=int, default=64, help="episodes per task (default: 64)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="test (default; every reported number) or train: to choose sampling settings such as "
                             "--guidance-context without looking at the test split, with --first-seed 1000000 so "
                             "that no episode comes from the training pool")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first episode (default: 0)")
    parser.add_argument("--k", type=int, default=3, help="context images per episode (default: 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="episodes generated at once (default: 16)")
    parser.add_argument("--tasks", nargs="+", default=None, help="ShapesWorld tasks (default: all nine)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                        help="settings to run (default: all four)")
    parser.add_argument("--k-shot", type=int, nargs="*", default=None, metavar="K",
                        help="also measure RMSE vs k in setting C for these k (flag alone: 1 2 3 4 5)")
    parser.add_argument("--k-shot-task", default="edge2img", help="ShapesWorld task for --k-shot (default: edge2img)")
    parser.add_argument("--out", default=None, help="JSON file to write (default: outputs/eval_<world>.json)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)

    pipe = _load_pipeline(args)
    world_name = _world_name(pipe, args.world)
    config = EvalConfig(episodes=args.episodes, k=args.k, steps=args.steps,
                        guidance_scale_context=args.guidance_context, guidance_scale_prompt=args.guidance_prompt,
                        sampler=args.sampler, batch_size=args.batch_size, seed=args.seed,
                        settings=tuple(args.settings), progress=not args.no_progress, split=args.split,
                        first_seed=args.first_seed)
    if world_name == "shapes":
        world = ShapesWorld(split=config.split, size=pipe.image_size)
        results = evaluate_shapes(pipe, config, tasks=args.tasks, world=world)
    else:
        world = None
        results = evaluate_glyphs(pipe, config)  # on the test split: both glyph test splits
    if args.k_shot is not None:
        task = args.k_shot_task if world_name == "shapes" else None
        world = world or GlyphWorld(split=config.split, size=pipe.image_size, progress=config.progress)
        results["k_shot"] = k_shot_scaling(pipe, world, task, ks=args.k_shot or (1, 2, 3, 4, 5), config=config)
        results["k_shot_task"] = task or "font2font"
    results["checkpoint"] = str(args.checkpoint)
    results["goals"] = goal_rows(results)
    print(format_table(results))
    out = Path(args.out or f"outputs/eval_{world_name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


def main_sample(argv: list[str] | None = None) -> Path:
    """``python -m ctxdiff_from_scratch sample``: generate from image files (or a test episode) into a PNG grid."""
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch sample",
                                     description="Generate images from a query and context images and save a grid "
                                                 "(query | context | samples [| target]).")
    _add_generation_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--query", help="query image file (an edge/segmentation/depth map, a glyph, ...)")
    source.add_argument("--episode", type=int, metavar="SEED",
                        help="use the test episode of this seed from the checkpoint's world instead of files")
    parser.add_argument("--context", nargs="*", default=[], help="context image files (none: k = 0)")
    parser.add_argument("--prompt", default=None, help="text prompt (default: none; with --episode: the episode's)")
    parser.add_argument("--task", default=None, help="ShapesWorld task for --episode (default: edge2img)")
    parser.add_argument("--k", type=int, default=3, help="context images for --episode (default: 3)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples to draw (default: 1)")
    parser.add_argument("--out", default="outputs/sample.png", help="PNG to write (default: outputs/sample.png)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import set_plot_style, show_row

    pipe = _load_pipeline(args)
    size = pipe.image_size
    target = None
    if args.episode is not None:
        if _world_name(pipe, "auto") == "shapes":
            episode = ShapesWorld(split="test", size=size).episode(args.episode, task=args.task or "edge2img", k=args.k)
        else:
            episode = GlyphWorld(split="test", size=size, progress=False).episode(args.episode, k=args.k)
        query, context, target = episode.query, episode.context, episode.target
        prompt = episode.prompt if args.prompt is None else args.prompt
    else:
        query, context, prompt = args.query, list(args.context), args.prompt
    query, context, _, prompts = pipe.prepare_inputs(query, context, prompt)
    n = args.num_samples
    samples = pipe(query=query.expand(n, -1, -1, -1), context=context.expand(n, -1, -1, -1, -1),
                   prompt=None if prompts is None else prompts * n, num_inference_steps=args.steps,
                   guidance_scale_context=args.guidance_context, guidance_scale_prompt=args.guidance_prompt,
                   seed=args.seed, sampler=args.sampler, progress=not args.no_progress)
    images = [query[0], *context[0], *samples] + ([target] if target is not None else [])
    titles = (["query", *[f"context {i + 1}" for i in range(context.shape[1])],
               *[f"sample {i + 1}" for i in range(n)]] + (["target"] if target is not None else []))
    set_plot_style()
    fig, axes = plt.subplots(1, len(images), figsize=(1.4 * len(images), 1.8), squeeze=False)
    show_row(axes[0], images, titles)
    if prompts:
        fig.suptitle(f"prompt: {prompts[0]!r}", fontsize=8)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out}")
    return out

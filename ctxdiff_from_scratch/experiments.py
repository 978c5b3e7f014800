"""The experiments of the paper's tables at toy scale: a published protocol, labelled checkpoints, a bootstrap interval
on every number, and the files they are written to (``eval --protocol``).

A protocol of ``data/eval_protocol.json`` fixes the episodes (split, seeds, k), the tasks, the settings, the sampler
and the bootstrap. Every checkpoint (``label=path``: ours, the Prompt-Diffusion-style baseline, the sum / mean /
concat ablations, ...) is scored on the same episodes with, batch by batch, the same starting noise, and every score
is kept per episode, so each cell of a table is an estimate with its 95% percentile-bootstrap interval (metrics.py):

* ShapesWorld, tables ``forward`` and ``out_of_domain`` (the scribble, sketch and Canny queries never trained on):
  RMSE, FD-ours, layout fidelity, the MSE on the shapes' pixels and colour binding; ``reverse``: RMSE (Table 2's
  metrics). Rows: the tasks and their group pooled. Columns: each checkpoint in each setting (C+P, C, P), the
  mean-colour baseline and, for layout fidelity, the ground truth (its own texture has edges the layout lacks).
* GlyphWorld, table ``glyphs``: glyph IoU and RMSE on both glyph test splits (and a ``--fonts`` folder) for each
  checkpoint in setting C, against returning the query and the nearest training font (``baselines/glyph_retrieval``).
* ``k_shot``: RMSE against the number of context images k, setting C.
* ``paired``: the first checkpoint minus each other one, on the same episodes (a paired bootstrap, which cancels
  what the episodes share), for every metric but FD-ours, whose replicates each cost an eigendecomposition.

FD-ours compares each cell's generated images with the ground truth of the same episodes, through the first
checkpoint's frozen image encoder for every column (a Frechet distance on this project's features, never an FID).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .baselines.glyph_retrieval import nearest_font_answers
from .data import Episode, EpisodeBatch, GlyphWorld, ShapesWorld, collate_episodes
from .data.shapes import REVERSE_TASKS, TASKS
from .evaluate import (TASK_GROUPS, TEXT_FONTS_ROW, EvalConfig, binding_counts, episode_seeds,
                       episode_sources, generate_episodes, glyph_iou, mean_colour_baseline, per_image_mse,
                       shape_pixel_errors, target_rasters, with_checkpoint_guidance, world_settings)
from .metrics import (FD_OURS, bootstrap_ci, check_bootstrap, format_ci, image_features, layout_edge_maps,
                      layout_fidelity, paired_bootstrap_ci, paired_fd, pooled_ratio, root_mean)

PROTOCOL_FILE = Path(__file__).resolve().parents[1] / "data" / "eval_protocol.json"
RMSE, IOU, LAYOUT, SHAPE_MSE, BINDING = "RMSE", "glyph IoU", "layout fidelity", "shape MSE", "colour binding"
# each metric's statistic of the per-episode values (metrics.py): RMSE = sqrt(mean_i MSE_i), pooled ratios, means
STATISTICS: dict[str, Callable[[np.ndarray], float]] = {RMSE: root_mean, FD_OURS: paired_fd, LAYOUT: np.mean,
                                                        SHAPE_MSE: pooled_ratio, BINDING: pooled_ratio, IOU: np.mean}
MEAN_COLOUR_METHOD, GROUND_TRUTH = "mean colour", "ground truth"
RETURN_QUERY, NEAREST_FONT = "return the query", "nearest training font"
REFERENCE_METRICS = {GROUND_TRUTH: (LAYOUT,)}  # the ground truth scores perfectly on everything else
NO_SETTING = "-"  # the setting column of a baseline, which has none
K_SHOT_SETTING = "C"  # k-shot scaling measures what the context alone gives
CSV_COLUMNS = ("table", "row", "method", "setting", "metric", "estimate", "ci_low", "ci_high", "episodes")


class Key(NamedTuple):
    """Where a per-episode sample belongs: one cell of one table."""

    table: str
    row: str
    method: str
    setting: str
    metric: str


@dataclass
class Protocol:
    """One protocol of ``data/eval_protocol.json`` (:func:`load_protocol`); its fields are the file's keys.

    split, first_seed, episodes, k: the episodes, seeds first_seed .. first_seed + episodes - 1 of every task
    tasks: ShapesWorld's tasks by group ("forward", "reverse", "out_of_domain"), each task in its own group
    settings: of ``evaluate.SETTINGS``; GlyphWorld keeps those without a prompt
    k_shot, k_shot_task: the ks of the k-shot table (setting C) and its ShapesWorld task
    steps, sampler, seed, batch_size: generation, as ``EvalConfig``
    bootstrap_resamples, bootstrap_level, bootstrap_seed: every interval's percentile bootstrap
    grid_episodes: episodes shown in each qualitative grid
    """

    name: str
    description: str
    split: str
    first_seed: int
    episodes: int
    k: int
    tasks: dict[str, tuple[str, ...]]
    settings: tuple[str, ...]
    k_shot: tuple[int, ...]
    k_shot_task: str
    steps: int
    sampler: str
    seed: int
    batch_size: int
    bootstrap_resamples: int
    bootstrap_level: float
    bootstrap_seed: int
    grid_episodes: int

    def __post_init__(self) -> None:
        self.tasks = {group: tuple(tasks) for group, tasks in self.tasks.items()}
        self.settings, self.k_shot = tuple(self.settings), tuple(self.k_shot)
        for group, tasks in self.tasks.items():
            if group not in TASK_GROUPS:
                raise ValueError(f"protocol {self.name!r}: unknown task group {group!r}; choose from "
                                 f"{list(TASK_GROUPS)}.")
            strays = [t for t in tasks if t not in TASK_GROUPS[group]]
            if strays:
                raise ValueError(f"protocol {self.name!r}: {strays} are not {group} tasks; those are "
                                 f"{TASK_GROUPS[group]}.")
        if self.k_shot_task not in TASKS:
            raise ValueError(f"protocol {self.name!r}: k_shot_task {self.k_shot_task!r} is not one of {TASKS}.")
        if not self.k_shot or min(self.k_shot) < 1:
            raise ValueError(f"protocol {self.name!r}: k_shot must list ks >= 1, got {list(self.k_shot)}.")
        if not 1 <= self.grid_episodes <= self.episodes:
            raise ValueError(f"protocol {self.name!r}: grid_episodes must be in [1, episodes = {self.episodes}], "
                             f"got {self.grid_episodes}.")
        check_bootstrap(self.bootstrap_resamples, self.bootstrap_level)
        self.eval_config()  # EvalConfig checks the split, seeds, counts, k and settings

    def eval_config(self, k: int | None = None) -> EvalConfig:
        """The generation settings of this protocol (at another k for the k-shot table); guidance scales are left to
        each checkpoint (``evaluate.with_checkpoint_guidance``)."""
        return EvalConfig(episodes=self.episodes, k=self.k if k is None else k, steps=self.steps,
                          sampler=self.sampler, seed=self.seed, batch_size=self.batch_size, settings=self.settings,
                          progress=False, split=self.split, first_seed=self.first_seed)

    @property
    def seeds(self) -> range:
        return episode_seeds(self.eval_config())

    def interval(self, values: np.ndarray, metric: str) -> tuple[float, float, float]:
        """(estimate, low, high) of ``metric`` over per-episode ``values``, with this protocol's bootstrap."""
        return bootstrap_ci(values, STATISTICS[metric], self.bootstrap_resamples, self.bootstrap_level,
                            self.bootstrap_seed)

    def paired_interval(self, values_a: np.ndarray, values_b: np.ndarray, metric: str) -> tuple[float, float, float]:
        """(difference, low, high) of ``metric`` between two methods scored on the same episodes."""
        return paired_bootstrap_ci(values_a, values_b, STATISTICS[metric], self.bootstrap_resamples,
                                   self.bootstrap_level, self.bootstrap_seed)


def load_protocol(name: str, path: str | Path = PROTOCOL_FILE) -> Protocol:
    """The protocol ``name`` ("quick", "full") of the manifest at ``path`` (default: data/eval_protocol.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no protocol manifest at {path}; the published one is {PROTOCOL_FILE}.")
    protocols = json.loads(path.read_text()).get("protocols", {})
    if name not in protocols:
        raise ValueError(f"unknown protocol {name!r}; {path} has {sorted(protocols)}.")
    fields = {f.name for f in dataclasses.fields(Protocol)} - {"name"}
    missing, unknown = sorted(fields - set(protocols[name])), sorted(set(protocols[name]) - fields)
    if missing or unknown:
        raise ValueError(f"protocol {name!r} in {path}: missing fields {missing}, unknown fields {unknown}; "
                         f"a protocol has exactly {sorted(fields)}.")
    return Protocol(name=name, **protocols[name])


# --- checkpoints -----------------------------------------------------------------------------------------------------
def parse_checkpoints(specs: Sequence[str]) -> dict[str, Path]:
    """``LABEL=PATH`` strings (``--checkpoint ours=data/checkpoints/shapes``) -> {label: folder}, in the given order:
    the first is the one the paired table compares every other against."""
    checkpoints: dict[str, Path] = {}
    for spec in specs:
        label, separator, path = (part.strip() for part in spec.partition("="))
        if not separator or not label or not path:
            raise ValueError(f"--checkpoint {spec!r} must be LABEL=PATH, a label for the tables and a checkpoint "
                             "folder, e.g. --checkpoint ours=data/checkpoints/shapes.")
        if label in checkpoints:
            raise ValueError(f"the label {label!r} is given twice; give every checkpoint its own label.")
        if not Path(path).is_dir():
            raise FileNotFoundError(f"checkpoint {label!r}: no folder at {path} (working directory: {Path.cwd()}); "
                                    "shipped checkpoints live in data/checkpoints/shapes and data/checkpoints/glyphs.")
        checkpoints[label] = Path(path)
    if not checkpoints:
        raise ValueError("give at least one --checkpoint LABEL=PATH.")
    return checkpoints


def common_world(pipes: dict) -> str:
    """The world every pipeline's model was trained on; checkpoints of different worlds or image sizes cannot be
    scored on the same episodes."""
    worlds = {label: (pipe.model.config.world, pipe.image_size) for label, pipe in pipes.items()}
    if len(set(worlds.values())) != 1:
        described = ", ".join(f"{label}: {world} at {size} px" for label, (world, size) in worlds.items())
        raise ValueError(f"the checkpoints come from different worlds or image sizes ({described}); compare "
                         "checkpoints of one world in one run.")
    return next(iter(worlds.values()))[0]


def describe_checkpoint(pipe, protocol: Protocol) -> dict:
    """What results.json records of a checkpoint: its kind, combination mode and the guidance scales used."""
    config = with_checkpoint_guidance(pipe, protocol.eval_config())
    return {"world": pipe.model.config.world, "image_size": pipe.image_size,
            "baseline": pipe.model.config.baseline or "context-diffusion",
            "combine": pipe.model.config.context.combine, "guidance_scale_context": config.guidance_scale_context,
            "guidance_scale_prompt": config.guidance_scale_prompt, "device": str(pipe.device)}


# --- scoring ---------------------------------------------------------------------------------------------------------
Scorer = Callable[[torch.Tensor], dict[str, np.ndarray]]


def rmse_scorer(target: torch.Tensor) -> Scorer:
    """Per-image MSE (its root mean is RMSE) of generated images (N, 3, H, W) against ``target``."""
    return lambda images: {RMSE: per_image_mse(images, target).numpy()}


def shapes_image_scorer(world: ShapesWorld, seeds: Sequence[int], task: str, k: int, target: torch.Tensor,
                        image_encoder: torch.nn.Module) -> Scorer:
    """Every image metric of a ShapesWorld task whose output is an image, per episode: the MSE, the features beside
    the ground truth's (FD-ours), layout fidelity, (squared error, values) on the shapes' pixels and (bound, counted)
    shapes of colour binding."""
    rasters = target_rasters(world, seeds, task, k)
    masks = torch.from_numpy(np.stack([r.classes >= 0 for r in rasters]))  # (N, H, W): the shapes' pixels
    layouts = layout_edge_maps(world, seeds, task, k)
    target_features = image_features(image_encoder, target).numpy()

    def score(images: torch.Tensor) -> dict[str, np.ndarray]:
        errors, counts = shape_pixel_errors(images, target, masks)
        features = image_features(image_encoder, images).numpy()
        return {RMSE: per_image_mse(images, target).numpy(),
                FD_OURS: np.concatenate([features, target_features], axis=1),  # (N, E) x 2 -> (N, 2E)
                LAYOUT: layout_fidelity(images, layouts).numpy(),
                SHAPE_MSE: torch.stack([errors, counts], dim=1).numpy(),  # (N,) x 2 -> (N, 2)
                BINDING: binding_counts(images, target, rasters)[:, :2]}  # (N, 3) -> (N, 2): bound, counted
    return score


def glyph_scorer(target: torch.Tensor) -> Scorer:
    """Glyph IoU of the ink and per-image MSE against ``target`` glyphs."""
    return lambda images: {IOU: glyph_iou(images, target).numpy(), RMSE: per_image_mse(images, target).numpy()}


@dataclass
class Row:
    """One row of a table: the episodes of one task of one world, how they are scored, and which baselines answer.

    references: (episode batch) -> {baseline name: its answers (N, 3, H, W)}
    """

    table: str
    name: str
    world: ShapesWorld | GlyphWorld
    task: str | None
    k: int
    settings: tuple[str, ...]
    scorer: Callable[[torch.Tensor], Scorer]  # target (N, 3, H, W) -> Scorer
    references: Callable[[EpisodeBatch], dict[str, torch.Tensor]] = lambda batch: {}


@dataclass
class Sample:
    """What a qualitative grid shows of a row: its first episodes, their seeds and each column's images of them."""

    seeds: list[int]
    episodes: list[Episode]
    images: dict[str, torch.Tensor]


def column_name(method: str, setting: str) -> str:
    return method if setting == NO_SETTING else f"{method} {setting}"


def run_row(pipes: dict, row: Row, protocol: Protocol, bar) -> tuple[dict[Key, np.ndarray], Sample]:
    """Generate ``row``'s episodes with every checkpoint in every setting, score them and the baselines' answers."""
    seeds = protocol.seeds
    episodes = [row.world.episode(seed, task=row.task, k=row.k) for seed in seeds]
    batch = collate_episodes(episodes)
    score = row.scorer(batch.target)
    scores, shown = {}, {}
    for label, pipe in pipes.items():
        config = with_checkpoint_guidance(pipe, protocol.eval_config(row.k))
        sources = episode_sources(pipe, row.world, seeds, row.task, row.k)
        for setting in row.settings:
            bar.set_postfix_str(f"{row.name} {label} {setting}")
            images = generate_episodes(pipe, episodes, setting, config, sources)
            scores |= {Key(row.table, row.name, label, setting, m): v for m, v in score(images).items()}
            shown[column_name(label, setting)] = images[:protocol.grid_episodes]
            bar.update()
    for method, images in row.references(batch).items():
        kept = REFERENCE_METRICS.get(method)
        scores |= {Key(row.table, row.name, method, NO_SETTING, m): v for m, v in score(images).items()
                   if kept is None or m in kept}
    shown_seeds = list(seeds[:protocol.grid_episodes])
    return scores, Sample(shown_seeds, episodes[:protocol.grid_episodes], shown)


def pool_groups(scores: dict[Key, np.ndarray], groups: dict[str, Sequence[str]]) -> dict[Key, np.ndarray]:
    """A row per group (table = row = the group's name) whose samples join its tasks' episodes, in task order."""
    pooled: dict[Key, list[np.ndarray]] = {}
    for group, tasks in groups.items():
        for key, values in scores.items():
            if key.table == group and key.row in tasks:
                pooled.setdefault(key._replace(row=group), []).append(values)
    return {key: np.concatenate(parts) for key, parts in pooled.items()}


def k_shot_rows(world, task: str | None, protocol: Protocol) -> list[Row]:
    """The k-shot table's rows: RMSE in setting C at each k of the protocol (same episodes: a larger k only adds
    context images)."""
    return [Row("k_shot", f"k={k}", world, task, k, (K_SHOT_SETTING,), rmse_scorer) for k in protocol.k_shot]


def shapes_rows(world: ShapesWorld, protocol: Protocol, image_encoder: torch.nn.Module) -> list[Row]:
    """One row per task of the protocol: reverse tasks scored by RMSE, the others by every image metric; the
    mean-colour baseline everywhere and the ground truth for layout fidelity."""
    def scorer(task: str) -> Callable[[torch.Tensor], Scorer]:
        if task in REVERSE_TASKS:
            return rmse_scorer
        return lambda target: shapes_image_scorer(world, protocol.seeds, task, protocol.k, target, image_encoder)

    def references(batch: EpisodeBatch) -> dict[str, torch.Tensor]:
        return {MEAN_COLOUR_METHOD: mean_colour_baseline(batch.context, batch.context_mask),
                GROUND_TRUTH: batch.target}

    return [Row(group, task, world, task, protocol.k, protocol.settings, scorer(task), references)
            for group, tasks in protocol.tasks.items() for task in tasks]


def glyph_rows(worlds: dict[str, GlyphWorld], training_world: GlyphWorld, protocol: Protocol) -> list[Row]:
    """One row per glyph test world, the checkpoints in the settings without a prompt against the two baselines."""
    def references(world: GlyphWorld) -> Callable[[EpisodeBatch], dict[str, torch.Tensor]]:
        return lambda batch: {RETURN_QUERY: batch.query,
                              NEAREST_FONT: nearest_font_answers(training_world, world, protocol.seeds, protocol.k)}

    settings = world_settings(next(iter(worlds.values())), protocol.eval_config())
    return [Row("glyphs", name, world, None, protocol.k, settings, glyph_scorer, references(world))
            for name, world in worlds.items()]


# --- an experiment ---------------------------------------------------------------------------------------------------
@dataclass
class Experiment:
    """Everything one run measured: the per-episode samples, the cells with their intervals, the grids' images."""

    world: str
    protocol: Protocol
    checkpoints: dict[str, dict]
    scores: dict[Key, np.ndarray]
    cells: list[dict]
    samples: dict[str, Sample]
    wall_time_s: float


def counted(values: np.ndarray, metric: str) -> np.ndarray:
    """(N,) bool: the episodes that count towards ``metric``. A pooled ratio cannot use an episode with nothing in
    its denominator (colour binding counts no shape in an image without two shapes of rival colours; the shape MSE
    none in a target without a visible shape): a resample of only such episodes would have no value. The
    denominators depend on the ground truth alone, so every method keeps the same episodes."""
    if metric in (SHAPE_MSE, BINDING):
        return values[:, 1] > 0
    return np.ones(len(values), dtype=bool)


def cell(key: Key, interval: tuple[float, float, float], episodes: int) -> dict:
    return {**key._asdict(), "estimate": interval[0], "ci_low": interval[1], "ci_high": interval[2],
            "episodes": episodes}


def interval_cells(scores: dict[Key, np.ndarray], protocol: Protocol, labels: Sequence[str]) -> list[dict]:
    """Every cell as a CSV row (``CSV_COLUMNS``), then the ``paired`` table: labels[0] minus each other label on
    the same episodes, for every metric but FD-ours. A cell without any episode that counts is left out."""
    cells = []
    for key, values in scores.items():
        kept = values[counted(values, key.metric)]
        if len(kept):
            cells.append(cell(key, protocol.interval(kept, key.metric), len(kept)))
    first = labels[0]
    for key, values in scores.items():
        if key.method == first or key.method not in labels or key.metric == FD_OURS:
            continue
        reference = scores[key._replace(method=first)]
        both = counted(reference, key.metric) & counted(values, key.metric)
        if both.any():
            paired_key = key._replace(table="paired", row=f"{key.table}: {key.row}", method=f"{first} - {key.method}")
            cells.append(cell(paired_key, protocol.paired_interval(reference[both], values[both], key.metric),
                              int(both.sum())))
    return cells


def run_experiment(pipes: dict, protocol: Protocol, rows: list[Row], groups: dict[str, Sequence[str]],
                   world: str, progress: bool = True) -> Experiment:
    """Run ``rows`` for every checkpoint of ``pipes`` ({label: pipeline}, first the reference of ``paired``), pool
    ``groups`` and put an interval on every cell."""
    start = time.perf_counter()
    checkpoints = {label: describe_checkpoint(pipe, protocol) for label, pipe in pipes.items()}
    scores, samples = {}, {}
    total = sum(len(row.settings) for row in rows) * len(pipes)
    with tqdm(total=total, desc=f"experiments ({world}, {protocol.name})", disable=not progress) as bar:
        for row in rows:
            row_scores, sample = run_row(pipes, row, protocol, bar)
            scores |= row_scores
            if row.table != "k_shot":
                samples[row.name] = sample
    scores |= pool_groups(scores, groups)
    cells = interval_cells(scores, protocol, list(pipes))
    return Experiment(world, protocol, checkpoints, scores, cells, samples, time.perf_counter() - start)


def run_shapes(pipes: dict, protocol: Protocol, world: ShapesWorld | None = None,
               progress: bool = True) -> Experiment:
    """The ShapesWorld tables (forward, reverse, out_of_domain, k_shot, paired) of ``protocol`` for ``pipes``."""
    size = next(iter(pipes.values())).image_size
    world = world or ShapesWorld(split=protocol.split, size=size)
    encoder = next(iter(pipes.values())).model.image_encoder
    rows = shapes_rows(world, protocol, encoder) + k_shot_rows(world, protocol.k_shot_task, protocol)
    return run_experiment(pipes, protocol, rows, protocol.tasks, "shapes", progress)


def glyph_test_worlds(protocol: Protocol, size: int, fonts: str | Path | None = None,
                      progress: bool = True) -> dict[str, GlyphWorld]:
    """The glyph worlds a protocol reports: the held-out families of its split (``font2font``), on the test split
    also the text fonts never trained on, and every font of a ``fonts`` folder (or file)."""
    worlds = {"font2font": GlyphWorld(split=protocol.split, size=size, progress=progress)}
    if protocol.split == "test":
        worlds[TEXT_FONTS_ROW] = GlyphWorld(split="test-text", size=size, progress=progress)
    if fonts is not None:
        worlds[f"font2font_{Path(fonts).name}"] = GlyphWorld(split="all", size=size, fonts=fonts, progress=progress)
    return worlds


def run_glyphs(pipes: dict, protocol: Protocol, worlds: dict[str, GlyphWorld] | None = None,
               training_world: GlyphWorld | None = None, progress: bool = True) -> Experiment:
    """The GlyphWorld tables (glyphs, k_shot on the first world, paired) of ``protocol`` for ``pipes``; the
    retrieval baseline looks fonts up in ``training_world`` (default: GlyphWorld's training split)."""
    size = next(iter(pipes.values())).image_size
    worlds = worlds or glyph_test_worlds(protocol, size, progress=progress)
    training_world = training_world or GlyphWorld(split="train", size=size, progress=progress)
    rows = glyph_rows(worlds, training_world, protocol) + k_shot_rows(next(iter(worlds.values())), None, protocol)
    return run_experiment(pipes, protocol, rows, {}, "glyphs", progress)


# --- output ----------------------------------------------------------------------------------------------------------
def format_tables(cells: list[dict], level: float) -> str:
    """Every table and metric as aligned text: rows x (method, setting), each cell "estimate +- half-width"."""
    lines = []
    for table in dict.fromkeys(c["table"] for c in cells):
        for metric in dict.fromkeys(c["metric"] for c in cells if c["table"] == table):
            chosen = [c for c in cells if c["table"] == table and c["metric"] == metric]
            rows = list(dict.fromkeys(c["row"] for c in chosen))
            columns = list(dict.fromkeys(column_name(c["method"], c["setting"]) for c in chosen))
            text = {(c["row"], column_name(c["method"], c["setting"])):
                    format_ci((c["estimate"], c["ci_low"], c["ci_high"])) for c in chosen}
            widths = [max(len(col), *(len(text.get((r, col), "")) for r in rows)) + 2 for col in columns]
            first = max(len(r) for r in rows) + 2
            lines.append(f"{table}: {metric} (estimate +- half-width of the {level:.0%} bootstrap interval)")
            lines.append(" " * first + "".join(f"{col:>{w}}" for col, w in zip(columns, widths)))
            lines += [f"{r:<{first}}" + "".join(f"{text.get((r, col), ''):>{w}}" for col, w in zip(columns, widths))
                      for r in rows]
            lines.append("")
    return "\n".join(lines).rstrip()


def versions() -> dict:
    """The software a result was measured with."""
    from . import __version__

    return {"ctxdiff_from_scratch": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "torch_threads": torch.get_num_threads()}


def write_csvs(cells: list[dict], out: Path) -> list[Path]:
    """One CSV per table, one line per cell (``CSV_COLUMNS``)."""
    paths = []
    for table in dict.fromkeys(c["table"] for c in cells):
        path = out / f"{table}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(c for c in cells if c["table"] == table)
        paths.append(path)
    return paths


def file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)


def write_grids(samples: dict[str, Sample], out: Path) -> list[Path]:
    """A qualitative grid per row: query | context 1..k | each column's sample | ground truth, one episode a row."""
    import matplotlib.pyplot as plt

    from .plotting import image_grid, set_plot_style

    set_plot_style()
    paths = []
    for name, sample in samples.items():
        k = max(ep.k for ep in sample.episodes)
        rows = [[ep.query, *ep.context, *[None] * (k - ep.k), *(images[i] for images in sample.images.values()),
                 ep.target] for i, ep in enumerate(sample.episodes)]
        titles = ["query", *[f"context {j + 1}" for j in range(k)], *sample.images, "ground truth"]
        fig = image_grid(rows, [titles], [f"seed {seed}" for seed in sample.seeds])
        fig.suptitle(f"{name}: query, context, samples, ground truth", y=1.02)
        path = out / f"grid_{file_name(name)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_k_shot_plot(cells: list[dict], level: float, task: str, out: Path) -> Path:
    """RMSE against k on ``task`` for each checkpoint, with its bootstrap interval as error bars."""
    import matplotlib.pyplot as plt

    from .plotting import set_plot_style

    set_plot_style()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    chosen = [c for c in cells if c["table"] == "k_shot"]
    for method in dict.fromkeys(c["method"] for c in chosen):
        points = [c for c in chosen if c["method"] == method]
        ks = [int(c["row"].removeprefix("k=")) for c in points]
        estimate = np.array([c["estimate"] for c in points])
        spread = np.array([[e - c["ci_low"], c["ci_high"] - e] for e, c in zip(estimate, points)]).T  # (2, K)
        ax.errorbar(ks, estimate, yerr=spread, marker="o", capsize=3, label=method)
    ax.set(xlabel="context images k", ylabel="RMSE (setting C)",
           title=f"{task}: RMSE against k ({level:.0%} bootstrap intervals)")
    ax.set_xticks(sorted({int(c["row"].removeprefix("k=")) for c in chosen}))
    ax.legend()
    path = out / "k_shot.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def write_experiment(experiment: Experiment, out: str | Path) -> list[Path]:
    """Write the CSVs, the grids, the k-shot plot, the paper's claims checked (claims.md) and results.json
    (everything, per-episode values included, but FD-ours' feature rows) into the folder ``out``; returns the paths
    written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    level = experiment.protocol.bootstrap_level
    paths = write_csvs(experiment.cells, out) + write_grids(experiment.samples, out)
    task = experiment.protocol.k_shot_task if experiment.world == "shapes" else "font2font"
    paths.append(write_k_shot_plot(experiment.cells, level, task, out))
    results = {"world": experiment.world, "protocol": dataclasses.asdict(experiment.protocol),
               "checkpoints": experiment.checkpoints, "wall_time_s": experiment.wall_time_s, "versions": versions(),
               "fd_ours_image_encoder": next(iter(experiment.checkpoints)), "cells": experiment.cells,
               "per_episode": [{**key._asdict(), "values": values.tolist()}
                               for key, values in experiment.scores.items() if key.metric != FD_OURS],
               "files": [p.name for p in paths]}
    from .claims import check_claims, format_claims  # claims.py reads what this module writes

    claims = out / "claims.md"
    claims.write_text(format_claims(check_claims(results)) + "\n")
    results["files"].append(claims.name)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    return [*paths, claims, path]


# --- command ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Experiment:
    """``python -m ctxdiff_from_scratch eval --protocol NAME --checkpoint LABEL=PATH ... --out FOLDER``."""
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch eval",
                                     description="Run a published evaluation protocol (data/eval_protocol.json) for "
                                                 "one or more labelled checkpoints of one world and write one CSV "
                                                 "per table, results.json and PNGs (every number with its "
                                                 "bootstrap 95% interval) into --out.")
    parser.add_argument("--protocol", required=True, help="a protocol of --protocol-file, e.g. quick, full or combine")
    parser.add_argument("--protocol-file", default=str(PROTOCOL_FILE),
                        help="the manifest of protocols (default: data/eval_protocol.json)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                        help="a labelled checkpoint folder, repeatable; the first is the paired table's reference, "
                             "e.g. --checkpoint ours=data/checkpoints/shapes --checkpoint pd=runs/pd")
    parser.add_argument("--out", default="results", help="folder to write into (default: results)")
    parser.add_argument("--fonts", default=None,
                        help="GlyphWorld: also evaluate on every font of this folder (or file)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: get_device())")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        protocol = load_protocol(args.protocol, args.protocol_file)
        paths = parse_checkpoints(args.checkpoint)
        if args.fonts is not None and not Path(args.fonts).exists():
            raise FileNotFoundError(f"--fonts {args.fonts}: no such folder or file.")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; with --protocol, --out names a folder.")
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))

    from .device import get_device
    from .pipeline import ContextDiffusionPipeline

    device = get_device(args.device)
    pipes = {label: ContextDiffusionPipeline.from_pretrained(path, device=device) for label, path in paths.items()}
    try:
        world = common_world(pipes)
        if args.fonts is not None and world != "glyphs":
            raise ValueError(f"--fonts is for GlyphWorld checkpoints; these are {world} checkpoints.")
    except ValueError as error:
        parser.error(str(error))
    progress = not args.no_progress
    if world == "shapes":
        experiment = run_shapes(pipes, protocol, progress=progress)
    else:
        size = next(iter(pipes.values())).image_size
        experiment = run_glyphs(pipes, protocol, glyph_test_worlds(protocol, size, args.fonts, progress),
                                progress=progress)
    for label, path in paths.items():
        experiment.checkpoints[label]["path"] = str(path)
    print(format_tables(experiment.cells, protocol.bootstrap_level))
    written = write_experiment(experiment, out)
    print("\nthe paper's claims at toy scale:\n" + (out / "claims.md").read_text())
    for path in written:
        print(f"wrote {path}")
    print(f"protocol {protocol.name!r}: {experiment.wall_time_s:.0f} s")
    return experiment

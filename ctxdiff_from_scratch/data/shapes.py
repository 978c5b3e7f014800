"""ShapesWorld: a procedural in-context world that mirrors the paper's task suite (Sec. 4) at 64 x 64.

Each episode has a hidden *style* (``shapes_style.py``) or a map type, shared by its context and its target, and
*layouts* of 1-4 shapes (``shapes_layout.py``). Nine tasks, named ``source2target``:

* forward  ``edge2img``, ``seg2img``, ``depth2img``: paint the query map's layout in the context's style;
* reverse  ``img2edge``, ``img2seg``, ``img2depth``: turn the query image into the map type the context shows;
* out of domain, never trained on: ``scribble2img``, ``sketch2img`` (hand-drawn queries) and ``canny2img`` (edges
  detected on the styled target with ``edges.canny``).

As in the paper, the context shows *target-domain images only*, on other layouts; the query is the source-domain view
of the target's layout. The target is inferable: every shape class in the target also appears in at least one
context image, so its colour and texture can be read from the context (with k = 0, only the prompt tells). Forward and
out-of-domain prompts put the style into words; reverse prompts name the map ("an edge map").

Splits: ``train`` and ``test`` styles never share a held-out pairing (see ``shapes_style``) and every test target
shows one; layout seeds are even in ``train`` and odd in ``test``, so no layout is in both.

What other modules can use::

    world = ShapesWorld("train", size=64)
    world.episode(seed, task=None, k=3)        # an Episode (tensors); task=None cycles through world.train_tasks
    world.episode_spec(seed, task, k)          # the same episode unrendered: its Style, target and context Layouts
    world.labelled_episode(seed, task, k)      # the episode and its context images' class maps (k, H, W)
    world.context_sources(seed, task, k)       # (k, 3, H, W): each context image's source view, for example pairs
    world.styled_image(seed)                   # (image (3, H, W), style prompt), e.g. to train a text encoder
    world.styled_sample(seed)                  # the same image with its Style and shown classes, unworded
    world.styled_twins(seed)                   # that image and its binding twin (2, 3, H, W), with both prompts
    world.style(seed); world.layout(seed)      # a Style of the split; a Layout (even seeds in train, odd in test)
    world.render(layout, style)                # (3, H, W) image
    world.render_maps(layout, style=None)      # {"edge", "seg", "depth", "scribble", "sketch"[, "img", "canny"]}

Constants (re-exported here): ``TASKS`` and its three families, ``MAP_KINDS``, ``MAP_PROMPTS``, ``SHAPE_CLASSES``,
``SEG_COLOURS``, ``COLOURS``, ``TEXTURES``, ``BACKGROUNDS``, ``OUTLINES``, ``HELD_OUT_CLASS_COLOURS``,
``HELD_OUT_COLOUR_TEXTURES``; and the types ``Layout``, ``Shape``, ``Style``, ``LayoutConfig``.

Speed: ~1000 episodes/s at k = 3 on one core (``benchmarks/data_throughput.py``), with no dataset on disk. Shapes are
rasterised only inside their bounding squares, and the StylePainter caches every background and textured fill it has
built, so painting an image is a copy plus one masked copy per shape class.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .edges import QUERY_CANNY, canny
from .episode import Episode
from .shapes_layout import (SEG_COLOURS, SHAPE_CLASSES, Layout, LayoutConfig, Raster, Shape, depth_map, edge_map,
                            gray_to_rgb, rasterize, sample_layout, scribble_map, seg_map, sketch_map)
from .shapes_style import (BACKGROUNDS, COLOURS, HELD_OUT_CLASS_COLOURS, HELD_OUT_COLOUR_TEXTURES, OUTLINES, TEXTURES,
                           Style, StylePainter, binding_twin, sample_style)

FORWARD_TASKS = ("edge2img", "seg2img", "depth2img")
REVERSE_TASKS = ("img2edge", "img2seg", "img2depth")
OUT_OF_DOMAIN_TASKS = ("scribble2img", "sketch2img", "canny2img")
TASKS = FORWARD_TASKS + REVERSE_TASKS + OUT_OF_DOMAIN_TASKS
MAP_KINDS = ("edge", "seg", "depth", "scribble", "sketch", "canny")
MAP_PROMPTS = {"edge": "an edge map", "seg": "a segmentation map", "depth": "a depth map"}
SPLITS = ("train", "test")
NUM_PATCH_CLASSES = 1 + len(SHAPE_CLASSES)  # what a patch can show: background or one shape class
MIN_SIZE = 16

# Random streams are keyed by (seed, tag, split); tags 0..8 are the tasks, this one is for styled_image.
_STYLED_IMAGE_TAG = len(TASKS)

__all__ = ["ShapesWorld", "EpisodeSpec", "TASKS", "FORWARD_TASKS", "REVERSE_TASKS", "OUT_OF_DOMAIN_TASKS",
           "MAP_KINDS", "MAP_PROMPTS", "SHAPE_CLASSES", "SEG_COLOURS", "COLOURS", "TEXTURES", "BACKGROUNDS",
           "OUTLINES", "HELD_OUT_CLASS_COLOURS", "HELD_OUT_COLOUR_TEXTURES", "Layout", "LayoutConfig", "Shape",
           "Style"]


@dataclass(frozen=True)
class EpisodeSpec:
    """What an episode is made of, before rendering; useful to score generations per shape.

    task: the task name; style: for image targets the style shared by context and target, for reverse tasks the
    style of the query image; target_layout: the layout of query and target; context_layouts: one per context image;
    prompt: the episode's text.
    """

    task: str
    style: Style
    target_layout: Layout
    context_layouts: tuple[Layout, ...]
    prompt: str

    @property
    def source(self) -> str:
        """What the query shows: "img" or a map kind."""
        return self.task.split("2")[0]

    @property
    def target_kind(self) -> str:
        """What the target and context show: "img" or a map kind."""
        return self.task.split("2")[1]


def _check_seed(seed: int, name: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}.")


class ShapesWorld:
    """Procedural in-context episodes of coloured shapes (see the module docstring).

    split: "train" or "test"; size: image side in pixels (>= 16); config: how layouts are drawn (LayoutConfig).
    Everything is deterministic in (split, seed, task, k); the query, target and style of an episode do not depend on
    k, so the same seed with k = 0, 1, 3 is the same problem with more or less context.
    """

    tasks: tuple[str, ...] = TASKS
    train_tasks: tuple[str, ...] = FORWARD_TASKS + REVERSE_TASKS

    def __init__(self, split: str = "train", size: int = 64, config: LayoutConfig = LayoutConfig()):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}.")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
            raise ValueError(f"size must be an integer >= {MIN_SIZE} (pixels per side), got {size!r}.")
        self.split, self.size, self.config = split, int(size), config
        self._split_index = SPLITS.index(split)
        self._painter = StylePainter(self.size)

    def __repr__(self) -> str:
        return f"ShapesWorld(split={self.split!r}, size={self.size})"

    # --- random streams -------------------------------------------------------------------------------------------
    def _stream(self, seed: int, tag: int) -> random.Random:
        """The random stream of (seed, tag) in this split; distinct triples give distinct integer keys."""
        return random.Random((int(seed) * 32 + tag) * 2 + self._split_index)

    def _draw_layout_seed(self, rng: random.Random) -> int:
        # layout seed = 2 n + split index: even seeds belong to train, odd ones to test
        return 2 * rng.getrandbits(40) + self._split_index

    def layout(self, layout_seed: int, required: tuple[str, ...] = ()) -> Layout:
        """The layout of ``layout_seed`` (even in train, odd in test) containing the ``required`` classes."""
        _check_seed(layout_seed, "layout_seed")
        if layout_seed % 2 != self._split_index:
            raise ValueError(f"layout seed {layout_seed} belongs to the other split: {self.split} layout seeds are "
                             f"{'even' if self._split_index == 0 else 'odd'}.")
        return sample_layout(layout_seed, self.size, tuple(required), self.config)[0]

    # --- episodes -------------------------------------------------------------------------------------------------
    def episode_spec(self, seed: int, task: str | None = None, k: int = 3) -> EpisodeSpec:
        """Draw the style and layouts of an episode without rendering it (arguments as in ``episode``)."""
        return self._draw_episode(seed, task, k)[0]

    def _draw_episode(self, seed: int, task: str | None, k: int) -> tuple[EpisodeSpec, Raster, list[Raster]]:
        """The episode's spec and the rasters of its target and context layouts (drawing a layout rasterises it)."""
        _check_seed(seed)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k (the number of context images) must be an integer >= 0, got {k!r}.")
        # task=None cycles through the training tasks with the seed, so consecutive seeds make balanced batches
        task = self.train_tasks[seed % len(self.train_tasks)] if task is None else task
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; choose one of {self.tasks}.")
        rng = self._stream(seed, self.tasks.index(task))
        style, target, target_raster = self._styled_layout(rng)
        # Drawn after the target, so the target does not depend on k. Context i must show the target's classes
        # i, i + k, i + 2k, ...: together the contexts show every class the target has.
        classes = target.classes
        drawn = [sample_layout(self._draw_layout_seed(rng), self.size, classes[i::k], self.config) for i in range(k)]
        target_kind = task.split("2")[1]
        prompt = style.describe(classes) if target_kind == "img" else MAP_PROMPTS[target_kind]
        spec = EpisodeSpec(task, style, target, tuple(layout for layout, _ in drawn), prompt)
        return spec, target_raster, [raster for _, raster in drawn]

    def _styled_layout(self, rng: random.Random) -> tuple[Style, Layout, Raster]:
        """A style of this split and a layout to paint it on; in test the layout shows a held-out pairing."""
        style = sample_style(rng, self.split)
        required = (rng.choice(style.held_out_classes()),) if self.split == "test" else ()
        layout, raster = sample_layout(self._draw_layout_seed(rng), self.size, required, self.config)
        return style, layout, raster

    def episode(self, seed: int, task: str | None = None, k: int = 3) -> Episode:
        """One episode: query (3, H, W), context (k, 3, H, W), target (3, H, W), float32 in [0, 1].

        seed: any non-negative integer; task: one of ``tasks`` (None picks a training task from the seed);
        k: the number of context images (0 allowed).
        """
        return self.labelled_episode(seed, task, k)[0]

    def labelled_episode(self, seed: int, task: str | None = None, k: int = 3) -> tuple[Episode, np.ndarray]:
        """``episode(seed, task, k)`` and the class map of each context image: (k, H, W) int8, -1 on the background,
        else the SHAPE_CLASSES index -- which shape every context pixel shows, to teach a tokenizer to name them."""
        spec, target_raster, context_rasters = self._draw_episode(seed, task, k)
        target_image = self._painter.paint(target_raster, spec.style)  # the styled target, also the canny source
        query = self._view(spec.source, spec.target_layout, target_raster, spec.style, target_image)
        target = self._view(spec.target_kind, spec.target_layout, target_raster, spec.style, target_image)
        if k > 0:
            context = torch.from_numpy(np.stack([self._view(spec.target_kind, layout, raster, spec.style)
                                                 for layout, raster in zip(spec.context_layouts, context_rasters)]))
            # k x (3, H, W) -> (k, 3, H, W)
        else:
            context = torch.zeros(0, 3, self.size, self.size)
        classes = np.stack([raster.classes for raster in context_rasters]) if k > 0 else \
            np.zeros((0, self.size, self.size), dtype=np.int8)  # k x (H, W) -> (k, H, W)
        return Episode(torch.from_numpy(query), context, torch.from_numpy(target), spec.prompt, spec.task), classes

    def context_sources(self, seed: int, task: str | None = None, k: int = 3) -> torch.Tensor:
        """The source-domain view of each context layout of ``episode(seed, task, k)`` -> (k, 3, H, W) float32.

        The context shows target-domain images only (as in the paper); with these, context image i and source i form
        the example pair (source, target) that a Prompt-Diffusion-style model reads (``baselines/prompt_diffusion.py``).
        Source i is made as the episode's query is, from context layout i: for seg2img its segmentation map, for
        img2edge the layout painted in the episode's style, for canny2img the Canny edges of the styled context image.
        """
        spec, _, context_rasters = self._draw_episode(seed, task, k)
        if k == 0:
            return torch.zeros(0, 3, self.size, self.size)
        views = [self._view(spec.source, layout, raster, spec.style)
                 for layout, raster in zip(spec.context_layouts, context_rasters)]
        return torch.from_numpy(np.stack(views))  # k x (3, H, W) -> (k, 3, H, W)

    def _view(self, kind: str, layout: Layout, raster: Raster, style: Style | None,
              image: np.ndarray | None = None) -> np.ndarray:
        """(3, H, W) float32: the layout as an image in ``style`` ("img") or as the map ``kind``. ``image``, when
        given, is the layout already painted in ``style``."""
        if kind in ("img", "canny") and image is None:
            image = self._painter.paint(raster, style)
        if kind == "img":
            return image
        if kind == "canny":
            edges = canny(image.transpose(1, 2, 0), **QUERY_CANNY)
            return gray_to_rgb(edges)  # (3, H, W) -> (H, W, 3) for canny, then (H, W) -> (3, H, W)
        if kind == "edge":
            return edge_map(raster)
        if kind == "seg":
            return seg_map(raster)
        if kind == "depth":
            return depth_map(raster, self.config)
        if kind == "scribble":
            return scribble_map(layout, raster, self.size, self.config)
        if kind == "sketch":
            return sketch_map(layout, raster, self.size, self.config)
        raise ValueError(f"unknown view {kind!r}; choose 'img' or one of {MAP_KINDS}.")

    # --- single images and maps -----------------------------------------------------------------------------------
    def style(self, seed: int) -> Style:
        """A style of this split, drawn from ``seed`` (the same one ``styled_image(seed)`` paints)."""
        _check_seed(seed)
        return sample_style(self._stream(seed, _STYLED_IMAGE_TAG), self.split)

    def styled_image(self, seed: int) -> tuple[torch.Tensor, str]:
        """One styled image (3, H, W) and its style in words, e.g. to train the text encoder (CLIP-style)."""
        image, style, classes = self.styled_sample(seed)
        return image, style.describe(classes)

    def styled_sample(self, seed: int) -> tuple[torch.Tensor, Style, tuple[str, ...]]:
        """What ``styled_image(seed)`` paints, unworded: the image (3, H, W), its Style and the classes it shows."""
        _, style, layout, raster = self._styled_draw(seed)
        return torch.from_numpy(self._painter.paint(raster, style)), style, layout.classes

    def styled_twins(self, seed: int) -> tuple[torch.Tensor, list[str]]:
        """``styled_image(seed)`` and its binding twin: the same layout painted with ``binding_twin`` of its style.

        Returns images (2, 3, H, W) and their two prompts (same words, different binding), to train encoders that
        keep which colour goes with which shape. Where the split allows no twin (about 6% of train images), the
        second image and prompt repeat the first.
        """
        rng, style, layout, raster = self._styled_draw(seed)
        twin = binding_twin(style, layout.classes, rng, self.split) or style  # drawn next from the same stream
        images = [torch.from_numpy(self._painter.paint(raster, s)) for s in (style, twin)]
        return torch.stack(images), [style.describe(layout.classes), twin.describe(layout.classes)]

    def styled_siblings(self, seed: int) -> tuple[torch.Tensor, str]:
        """``styled_image(seed)`` and its style painted on a second layout, drawn next from the same stream.

        Returns images (2, 3, H, W) and the first image's prompt. The two share everything the style fixes (the
        background's pattern, colour and angle, each class's fill) and nothing else: what a context image shares
        with its episode's target, so an encoder that must match them keeps what the diffusion model reads.
        """
        images, prompt, _ = self.labelled_siblings(seed)
        return images, prompt

    def labelled_siblings(self, seed: int) -> tuple[torch.Tensor, str, np.ndarray]:
        """``styled_siblings(seed)`` with the class map of each image: (2, H, W) int8, -1 on the background, else
        the SHAPE_CLASSES index. They label every pixel, so an encoder can be asked what each of its patches shows."""
        rng, style, layout, raster = self._styled_draw(seed)
        _, second = sample_layout(self._draw_layout_seed(rng), self.size, (), self.config)
        images = [torch.from_numpy(self._painter.paint(r, style)) for r in (raster, second)]
        classes = np.stack([raster.classes, second.classes])  # 2 x (H, W) -> (2, H, W)
        return torch.stack(images), style.describe(layout.classes), classes

    def _styled_draw(self, seed: int) -> tuple[random.Random, Style, Layout, Raster]:
        """The style, layout and raster of ``styled_image(seed)``, and the random stream they were drawn from."""
        _check_seed(seed)
        rng = self._stream(seed, _STYLED_IMAGE_TAG)
        return (rng, *self._styled_layout(rng))

    def render(self, layout: Layout, style: Style) -> torch.Tensor:
        """(3, H, W) ``layout`` painted in ``style``."""
        return torch.from_numpy(self._painter.paint(rasterize(layout, self.size), style))

    def render_maps(self, layout: Layout, style: Style | None = None) -> dict[str, torch.Tensor]:
        """Every map of ``layout`` as (3, H, W) tensors: "edge", "seg", "depth", "scribble", "sketch", and, when a
        ``style`` is given, the styled "img" and its "canny" edges."""
        raster = rasterize(layout, self.size)
        kinds = [kind for kind in MAP_KINDS if kind != "canny"]
        kinds += ["img", "canny"] if style is not None else []
        return {kind: torch.from_numpy(self._view(kind, layout, raster, style)) for kind in kinds}


def patch_class_shares(classes: torch.Tensor, grid: int) -> torch.Tensor:
    """Per patch of a ``grid`` x ``grid`` split, the share of its pixels of each class: the dense target for tokens
    that should name what their patch shows. classes: (N, H, W) int, -1 on the background -> (N, grid*grid,
    NUM_PATCH_CLASSES), rows sum to 1, column 0 the background, patches in row-major token order."""
    size = classes.shape[-1]
    if classes.dim() != 3 or classes.shape[-2] != size or size % grid:
        raise ValueError(f"classes must be (N, H, H) with H a multiple of grid={grid}, got {tuple(classes.shape)}.")
    one_hot = F.one_hot(classes.long() + 1, NUM_PATCH_CLASSES).permute(0, 3, 1, 2).float()
    # (N, H, W) -> (N, H, W, C) -> (N, C, H, W)
    shares = F.avg_pool2d(one_hot, size // grid)  # (N, C, H, W) -> (N, C, g, g)
    return shares.flatten(2).transpose(1, 2)  # (N, C, g, g) -> (N, C, g*g) -> (N, g*g, C)


def patch_class_cross_entropy(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """How well per-patch class logits (..., C) name the patches' class shares (..., C): -sum_c s_c log p_c,
    averaged over the patches (its minimum is the shares' entropy)."""
    return -(shares * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()

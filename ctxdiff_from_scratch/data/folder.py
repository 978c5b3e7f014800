"""FolderWorld: a folder of your own images becomes ``edge2img`` episodes.

The *query* is the Canny edge map of an image (white edges on black, as in ShapesWorld), the *context* shows k other
images of the folder, and the *target* is the image itself; the prompt is empty. The context carries what the edges
cannot: the colours, textures and lighting of *your* pictures. Images are loaded once by
:func:`ctxdiff_from_scratch.images.load_folder` (square centre crop, resized), files that are not readable images
are skipped with one warning each.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..images import load_folder
from .edges import QUERY_CANNY, canny
from .episode import Episode

SPLITS = ("all", "train", "test")
TEST_FRACTION = 0.2  # share of a folder's images held out for split="test"


def edge_query(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image in [0, 1] -> (3, H, W) Canny edge map, white edges on black."""
    edges = canny(image.permute(1, 2, 0).numpy(), **QUERY_CANNY)  # (3, H, W) -> (H, W, 3) in, (H, W) bool out
    return torch.from_numpy(edges.astype(np.float32)).expand(3, -1, -1).contiguous()  # (H, W) -> (3, H, W)


def split_images(paths: list[Path], split: str, test_fraction: float = TEST_FRACTION) -> list[int]:
    """Indices of ``paths`` in ``split``: the test images are the first ``round(fraction * n)`` (at least 1) in
    SHA-256 order of their file names, so adding a file moves few others between splits."""
    if split == "all":
        return list(range(len(paths)))
    order = sorted(range(len(paths)), key=lambda i: hashlib.sha256(paths[i].name.encode()).hexdigest())
    test = set(order[: max(1, round(test_fraction * len(paths)))])
    return [i for i in range(len(paths)) if (i in test) == (split == "test")]


class FolderWorld:
    """``edge2img`` episodes from the images directly inside ``folder``.

    split: "all" (default) uses every image; "train" / "test" use 80% / 20% of them (:func:`split_images`). Context
        images come from the same split as the target, so test targets never appear in training episodes.
    size: image side in pixels (non-square images are centre-cropped).
    """

    tasks = ("edge2img",)
    train_tasks = ("edge2img",)

    def __init__(self, folder: str | Path, size: int = 64, split: str = "all") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        images, paths = load_folder(folder, size)
        keep = split_images(paths, split)
        if len(keep) < 2:
            raise ValueError(f"FolderWorld needs at least 2 readable images in split {split!r} (one target and one "
                             f"context image); {folder} gives {len(keep)} of {len(paths)} readable. Add images to "
                             "the folder" + (", or use split='all'." if split != "all" else "."))
        self.folder, self.size, self.split = Path(folder), size, split
        self.paths = [paths[i] for i in keep]
        self.images = images[keep]  # (N, 3, S, S)
        self.queries = torch.stack([edge_query(image) for image in self.images])  # (N, 3, S, S), computed once

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"FolderWorld({str(self.folder)!r}, size={self.size}, split={self.split!r}): {self.num_images} images"

    def episode(self, seed: int, task: str | None = None, k: int = 3) -> Episode:
        """One episode, deterministic in (folder contents, split, seed, k): the seed picks the target, then an order
        of the other images whose first k are the context (so a larger k extends the same context)."""
        if task not in (None, *self.tasks):
            raise ValueError(f"FolderWorld has tasks {self.tasks}, got {task!r}.")
        if not 0 <= k < self.num_images:
            raise ValueError(f"k must be in [0, {self.num_images - 1}]: this split has {self.num_images} images and "
                             f"the context excludes the target; got k={k}.")
        rng = np.random.default_rng(seed)
        target = int(rng.integers(self.num_images))
        others = torch.from_numpy(rng.permutation([i for i in range(self.num_images) if i != target])[:k])
        return Episode(query=self.queries[target].clone(), context=self.images[others].clone(),
                       target=self.images[target].clone(), prompt="", task="edge2img")

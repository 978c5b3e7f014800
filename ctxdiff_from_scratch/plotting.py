"""Figures shared by the notebooks, the demo and the CLI: one place for style, so nbval sees fixed figure sizes."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import torch

FIGURE_DPI = 80


def set_plot_style() -> None:
    """Fix figure size, dpi and fonts once per notebook, so figures look the same on every machine."""
    plt.rcParams.update({"figure.figsize": (8, 4), "figure.dpi": FIGURE_DPI, "savefig.dpi": FIGURE_DPI,
                         "axes.titlesize": 9, "font.size": 9})


def to_numpy_image(image: torch.Tensor):
    """(3, H, W) float in [0, 1] -> (H, W, 3) numpy array for ``imshow``."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()  # (3, H, W) -> (H, W, 3)


def show_row(axes: Sequence[plt.Axes], images: Sequence[torch.Tensor | None], titles: Sequence[str] = ()) -> None:
    """Draw ``images`` on ``axes`` left to right (None leaves a cell blank); blank out any axes left over."""
    titles = list(titles) + [""] * (len(axes) - len(titles))
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(images) and images[i] is not None:
            ax.imshow(to_numpy_image(images[i]), interpolation="nearest")
            ax.set_title(titles[i])


def episode_figure(episodes, max_k: int | None = None, row_labels: Sequence[str] | None = None) -> plt.Figure:
    """One row per episode: query | context 1..k | target. Returns the figure (the caller shows or saves it)."""
    max_k = max_k if max_k is not None else max(ep.k for ep in episodes)
    rows, titles = [], []
    for ep in episodes:
        k = min(ep.k, max_k)
        blanks = max_k - k  # shorter contexts leave cells blank, so every target lines up in the last column
        rows.append([ep.query, *ep.context[:k], *[None] * blanks, ep.target])
        titles.append(["query", *[f"context {i + 1}" for i in range(k)], *[""] * blanks, "target"])
    return image_grid(rows, titles, row_labels or [ep.task for ep in episodes])


def image_grid(rows: Sequence[Sequence[torch.Tensor | None]], titles: Sequence[Sequence[str]] = (),
               row_labels: Sequence[str] = (), cell: tuple[float, float] = (1.3, 1.45)) -> plt.Figure:
    """A grid of images: ``rows`` is a list of rows, each a list of (3, H, W) images (None leaves a cell blank);
    ``titles`` has the same nesting; ``row_labels`` are written left of each row. Returns the figure."""
    cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cell[0] * cols, cell[1] * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        show_row(axes[r], row, titles[r] if r < len(titles) else ())
        if r < len(row_labels):
            axes[r, 0].text(-0.15, 0.5, row_labels[r], transform=axes[r, 0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def png_bytes(image: torch.Tensor, scale: int = 1) -> bytes:
    """(3, H, W) in [0, 1] -> the bytes of a PNG file, each pixel a ``scale`` x ``scale`` block (for
    ``ipywidgets.Image``, which shows small images blurred unless they are enlarged first)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (to_numpy_image(image) * 255).round().astype(np.uint8)  # (H, W, 3)
    pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)  # (H, W, 3) -> (scale*H, scale*W, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    return buffer.getvalue()

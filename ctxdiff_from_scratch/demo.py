"""The main job (`make demo`): a gallery of in-context episodes from every world and task, written to a folder."""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

from .data import GlyphWorld, ShapesWorld
from .plotting import episode_figure, set_plot_style


def _glyph_world(split: str) -> GlyphWorld:
    """The Debian training fonts when installed; otherwise matplotlib's fonts, for display only."""
    try:
        return GlyphWorld(split=split)
    except FileNotFoundError as err:
        warnings.warn(f"{err} Showing matplotlib's own fonts instead (display only, never used for training).")
        return GlyphWorld(fonts=Path(matplotlib.get_data_path()) / "fonts" / "ttf")


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

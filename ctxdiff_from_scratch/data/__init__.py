"""The in-context data worlds: procedural shapes, real fonts, and a folder of your own images."""
from .episode import Episode, EpisodeBatch, collate_episodes
from .folder import FolderWorld
from .glyphs import GlyphWorld
from .shapes import ShapesWorld

__all__ = ["Episode", "EpisodeBatch", "collate_episodes", "ShapesWorld", "GlyphWorld", "FolderWorld", "WORLDS",
           "make_world"]

# The worlds that every part of the stack is trained on (FolderWorld is for your own images at sampling time).
WORLDS = ("shapes", "glyphs")


def make_world(name: str, split: str, size: int = 64) -> ShapesWorld | GlyphWorld:
    """``ShapesWorld`` or ``GlyphWorld`` of ``split`` at ``size`` pixels, by name."""
    if name == "shapes":
        return ShapesWorld(split=split, size=size)
    if name == "glyphs":
        return GlyphWorld(split=split, size=size, progress=False)
    raise ValueError(f"unknown world {name!r}; choose one of {WORLDS}.")

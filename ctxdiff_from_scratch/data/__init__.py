"""The in-context data worlds: procedural shapes, real fonts, and a folder of your own images."""
from .episode import Episode, EpisodeBatch, collate_episodes
from .folder import FolderWorld
from .glyphs import GlyphWorld
from .shapes import ShapesWorld

__all__ = ["Episode", "EpisodeBatch", "collate_episodes", "ShapesWorld", "GlyphWorld", "FolderWorld"]

"""GlyphWorld's retrieval baseline: the font whose glyphs best match the context, and its glyph of the query."""
from pathlib import Path

import matplotlib
import pytest
import torch

from ctxdiff_from_scratch.baselines.glyph_retrieval import nearest_font_glyph, nearest_training_font
from ctxdiff_from_scratch.data import GlyphWorld

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@pytest.fixture(scope="module")
def world():
    return GlyphWorld(fonts=MPL_FONTS, size=32, progress=False)


def test_a_context_from_a_known_font_finds_that_font_and_returns_exactly_its_glyph(world):
    for font in range(world.num_fonts):
        context = torch.stack([world.render(font, char) for char in "Rg5x"])  # (k, 3, S, S)
        assert nearest_training_font(world, context, "Rg5x") == font, world.font_names[font]
        assert torch.equal(nearest_font_glyph(world, context, "Rg5x", "A"), world.render(font, "A"))


def test_on_episodes_of_the_same_fonts_the_answer_is_the_target(world):
    for seed in range(6):
        font, query, chars = world.episode_characters(seed, k=3)
        episode = world.episode(seed, k=3)
        assert nearest_training_font(world, episode.context, chars) == font
        assert torch.equal(nearest_font_glyph(world, episode.context, chars, query), episode.target)


def test_a_slightly_damaged_context_still_finds_its_font(world):
    generator = torch.Generator().manual_seed(0)
    for font in range(world.num_fonts):
        context = torch.stack([world.render(font, char) for char in "hag"])
        flip = torch.rand(context.shape[0], 1, 32, 32, generator=generator) < 0.02  # 2% of the pixels inverted
        damaged = torch.where(flip, 1 - context, context)  # (k, 1, S, S) broadcast over the 3 grey channels
        assert nearest_training_font(world, damaged, "hag") == font, world.font_names[font]


def test_bad_inputs_are_explained(world):
    context = torch.stack([world.render(0, char) for char in "ab"])
    with pytest.raises(ValueError, match="len\\(context_chars\\)"):
        nearest_training_font(world, context, "abc")
    with pytest.raises(ValueError, match="world's size"):
        nearest_training_font(world, torch.ones(2, 3, 16, 16), "ab")
    with pytest.raises(ValueError, match="not in this world's charset"):
        nearest_training_font(world, context[:1], "%")

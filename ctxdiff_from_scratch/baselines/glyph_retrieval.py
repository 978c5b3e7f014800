"""GlyphWorld's retrieval baseline: answer with the training font that looks most like the context.

A few-shot font model should do better than looking the style up. This baseline has no generator at all: among the
fonts of a world (the *training* fonts, for an honest baseline), it picks the one whose renders of the k context
characters best match the k context glyphs, by the mean glyph IoU of their ink (``evaluate.glyph_iou``, the metric
the tables report), and returns that font's render of the query character:

    f* = argmax_f 1/k sum_j IoU(render(f, c_j), v_j),     answer = render(f*, query character)

On a context drawn from a training font it finds that font and returns exactly its glyph; on a font never trained on
it returns the nearest training font's glyph, the ceiling of "memorise the training fonts".
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data import GlyphWorld
from ..evaluate import glyph_iou


def nearest_training_font(world: GlyphWorld, context_glyphs: torch.Tensor, context_chars: str) -> int:
    """The index of the font of ``world`` whose renders of ``context_chars`` best match ``context_glyphs``.

    context_glyphs: (k, 3, S, S) dark-on-white glyphs at the world's size S; context_chars: their k characters, in
    order (``world.episode_characters(seed, k=k)`` gives an episode's). Ties go to the lowest font index.
    """
    k = len(context_chars)
    expected = (k, 3, world.size, world.size)
    if k == 0 or tuple(context_glyphs.shape) != expected:
        raise ValueError(f"context_glyphs must be (k, 3, {world.size}, {world.size}) with k = len(context_chars) >= 1 "
                         f"(here {k}), got {tuple(context_glyphs.shape)}; render them at the world's size.")
    candidates = torch.stack([torch.stack([world.render(font, char) for char in context_chars])
                              for font in range(world.num_fonts)])  # F x k x (3, S, S) -> (F, k, 3, S, S)
    glyphs = context_glyphs.float().cpu().expand_as(candidates)  # (k, 3, S, S) -> (F, k, 3, S, S)
    # score_f = 1/k sum_j IoU(render(f, c_j), v_j)
    iou = glyph_iou(candidates.flatten(0, 1), glyphs.flatten(0, 1))  # (F*k, 3, S, S) -> (F*k,)
    return int(iou.view(world.num_fonts, k).mean(dim=1).argmax())  # (F*k,) -> (F, k) -> (F,) -> best f


def nearest_font_glyph(world: GlyphWorld, context_glyphs: torch.Tensor, context_chars: str,
                       query_char: str) -> torch.Tensor:
    """The retrieval baseline's answer: ``query_char`` in :func:`nearest_training_font`'s font -> (3, S, S)."""
    return world.render(nearest_training_font(world, context_glyphs, context_chars), query_char)


def nearest_font_answers(training_world: GlyphWorld, world: GlyphWorld, seeds: Sequence[int], k: int
                         ) -> torch.Tensor:
    """The retrieval baseline's answer to each episode ``world.episode(seed, k=k)`` of ``seeds``, looked up among
    ``training_world``'s fonts (both worlds at the same size and charset) -> (N, 3, S, S)."""
    answers = []
    for seed in seeds:
        _, query_char, context_chars = world.episode_characters(seed, k=k)
        context = world.episode(seed, k=k).context
        answers.append(nearest_font_glyph(training_world, context, context_chars, query_char))
    return torch.stack(answers)  # N x (3, S, S) -> (N, 3, S, S)

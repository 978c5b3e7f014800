"""Shared test settings and fixtures.

One torch thread: the tests use tiny models, for which thread start-up costs more than it saves, and a fixed thread
count keeps float results identical from run to run (results change with the thread count: docs/experiments.md).

``world``, ``parts`` and ``batch``: the 32x32 ShapesWorld train split, tiny *untrained* frozen parts fitted to its
prompts, and three of its episodes with k = 1, 3, 2 (padded contexts). A module that defines fixtures of the same
names (e.g. a GlyphWorld ``world``) uses its own.
"""
import pytest
import torch

from ctxdiff_from_scratch.data import ShapesWorld, collate_episodes
from ctxdiff_from_scratch.model import FrozenParts

torch.set_num_threads(1)

TINY_SIZE = 32  # tiny parts: 32x32 images -> 4x8x8 latents


@pytest.fixture(scope="module")
def world():
    return ShapesWorld("train", size=TINY_SIZE)


@pytest.fixture(scope="module")
def parts(world):
    return FrozenParts.untrained(TINY_SIZE, [world.styled_image(s)[1] for s in range(60)])


@pytest.fixture(scope="module")
def batch(world):
    return collate_episodes([world.episode(seed, k=k) for seed, k in zip(range(3), (1, 3, 2))])

"""CLIP's image preprocessing with the project's own loader: needs neither torchvision nor ``CLIPImageProcessor``.

``CLIPImageProcessor`` resizes the short side to the vision tower's size (bicubic), centre-crops a square and
normalises with OpenAI's CLIP statistics. :func:`~ctxdiff_from_scratch.images.load_image_as_tensor` centre-crops
first and resizes once (Lanczos); with the same statistics it gives the same pixels for an image already at the
tower's size, and a mean absolute difference of 0.01-0.02 otherwise (in normalised units, where an image spans about
-2..2): the resampling filters differ, most at sharp edges (tests/test_stable_diffusion.py measures it).
"""
from __future__ import annotations

import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..images import normalize
from ..pipeline import prepare_context

# The statistics every OpenAI CLIP checkpoint's preprocessor_config.json holds (ViT-B/32 ... ViT-L/14).
CLIP_MEAN, CLIP_STD = tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, S, S) in [0, 1] -> CLIP's input: (x - mean) / std per channel."""
    return normalize(images, CLIP_MEAN, CLIP_STD)


def context_pixels(context, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context images in any form the from-scratch pipeline accepts -> (pixels (B, k, 3, S, S), mask (B, k) bool).

    Files and PIL images go through ``load_image_as_tensor(source, size)``, tensors in [0, 1] are checked and
    resized (with a warning) by :func:`~ctxdiff_from_scratch.pipeline.prepare_context`, which also raises the errors
    for missing or unreadable files and batch sizes that disagree; then CLIP normalisation. k = 0 gives (B, 0, ...).
    """
    images, mask = prepare_context(context, batch, size)
    return clip_normalize(images), mask

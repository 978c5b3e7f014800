"""A trainable visual tokenizer: the context images' pixels -> one token per 8x8-pixel patch, trained with Eq. 2.

The frozen image encoder (encoders.py) was trained CLIP-style to match a whole image to its caption, so its tokens
need not say which shape class each patch shows -- and a denoiser cannot bind "the circle is red" to the query's
circle without that. With perfect per-patch tokens and cross-attention at the 8x8 level the denoiser learns the
binding; with the frozen encoder's tokens it does not (docs/experiments.md, sections 19 and 21). This module learns
such tokens end to end, with the denoiser, from the same loss:

    f_p(v) = Conv_out(SiLU(Conv_s2(SiLU(Conv_s2(SiLU(Conv_s2(SiLU(Conv_in(v))))))))) + P      (B*k, g*g, D_v)

three stride-2 convolutions take a 64x64 image to an 8x8 grid (g = H / 8), so each token sees about 30 pixels around
its patch, a whole shape; P is a learned embedding of the grid position, so tokens keep where they came from. The
tokens have the frozen encoder's width D_v and enter Eq. 3 exactly as its tokens do (``ContextConfig.tokenizer``):
``"pixels"`` replaces the frozen tokens, ``"both"`` sets them side by side, (N_v + g*g) tokens per image, before the
k images are combined and projected.
"""
from __future__ import annotations

import torch
from torch import nn

from .context import encode_context_images

PATCH = 8  # pixels per token side: three stride-2 convolutions


class PixelTokenizer(nn.Module):
    """Context images (B, k, 3, H, W) in [0, 1] -> tokens (B, k, (H/8)*(W/8), D_v); zeros in padded slots."""

    def __init__(self, image_size: int, dim: int, channels: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        if image_size % PATCH:
            raise ValueError(f"the pixel tokenizer makes one token per {PATCH}x{PATCH} patch: the image size "
                             f"{image_size} must be a multiple of {PATCH}.")
        c1, c2, c3 = channels
        self.image_size, self.grid = image_size, image_size // PATCH
        self.net = nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),  # H -> H/2
                                 nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.SiLU(),  # H/2 -> H/4
                                 nn.Conv2d(c3, dim, 3, stride=2, padding=1), nn.SiLU(),  # H/4 -> H/8
                                 nn.Conv2d(dim, dim, 3, padding=1))
        self.position = nn.Parameter(0.02 * torch.randn(self.grid * self.grid, dim))  # P: one per grid cell

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, g*g, D_v)."""
        if images.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"the pixel tokenizer reads (n, 3, {self.image_size}, {self.image_size}) context "
                             f"images, got {tuple(images.shape)}.")
        features = self.net(images)  # (n, 3, H, W) -> (n, D_v, g, g)
        return features.flatten(2).transpose(1, 2) + self.position  # -> (n, D_v, g*g) -> (n, g*g, D_v)

    def forward(self, context_images: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor | None:
        """context_images (B, k, 3, H, W), context_mask (B, k) bool -> (B, k, g*g, D_v), None without context."""
        return encode_context_images(self.tokenize, context_images, context_mask)

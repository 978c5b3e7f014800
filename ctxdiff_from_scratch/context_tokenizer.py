"""A trainable visual tokenizer: each context image's latent -> one token per latent position, trained with Eq. 2.

The frozen image encoder (encoders.py) was trained CLIP-style to match a whole image to its caption, so its tokens
need not say which shape class each patch shows -- and a denoiser cannot bind "the circle is red" to the query's
circle without that. With perfect per-patch tokens and cross-attention at the 8x8 level the denoiser learns the
binding; with the frozen encoder's tokens it does not (docs/experiments.md, sections 19 and 21). This module learns
per-patch tokens end to end, with the denoiser, from the same loss. It reads the context image's latent z = E(v)
from the frozen autoencoder, whose every position already describes one 8x8-pixel patch:

    f_z(v) = Conv_2(SiLU(Conv_1(E(v)))) + P              (C, h, w) -> (D_v, h, w) -> (h*w, D_v) tokens

two 3x3 convolutions, so each token sees 5x5 latent positions (40 pixels around its patch, a whole shape), and P,
a learned embedding of the position, so tokens keep where they came from. A tokenizer over the pixels themselves
(three stride-2 convolutions) learned more slowly at 1.5x the cost in the same screen (section 21). The tokens have
the frozen encoder's width D_v and enter Eq. 3 in their place (``ContextConfig.tokenizer = "latents"``) or after
them (``"frozen+latents"``: the frozen encoder's tokens, trained to tell styles apart, then the trained ones):
combined over the k images, projected, and read by the UNet's cross-attention.

Learned from Eq. 2 alone such tokens come slowly; telling the tokenizer which shape class each patch shows brought
them about 1500 steps sooner in the screen of section 21. With ``patch_classes`` > 0 a linear head reads a class
distribution off every token, and ``patch_class_loss`` is the cross-entropy against the patch's class shares
(ShapesWorld's layouts label every pixel), added to Eq. 2 with ``train --patch-class-weight``:

    L_cls = - mean over tokens of sum_c s_c log softmax(W f_z(v) + b)_c       s: the patch's class shares
"""
from __future__ import annotations

import torch
from torch import nn

from .context import encode_context_images
from .data.shapes import patch_class_cross_entropy


class LatentTokenizer(nn.Module):
    """Context latents (B, k, C, h, w) -> tokens (B, k, h*w, D_v); zeros in padded slots."""

    def __init__(self, latent_channels: int, grid: int, dim: int, hidden: int = 128, patch_classes: int = 0):
        super().__init__()
        self.latent_channels, self.grid = latent_channels, grid
        self.net = nn.Sequential(nn.Conv2d(latent_channels, hidden, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(hidden, dim, 3, padding=1))
        self.position = nn.Parameter(0.02 * torch.randn(grid * grid, dim))  # P: one per latent position
        self.class_head = nn.Linear(dim, patch_classes) if patch_classes else None

    def tokenize(self, latents: torch.Tensor) -> torch.Tensor:
        """(n, C, h, w) -> (n, h*w, D_v)."""
        if latents.shape[1:] != (self.latent_channels, self.grid, self.grid):
            raise ValueError(f"the latent tokenizer reads (n, {self.latent_channels}, {self.grid}, {self.grid}) "
                             f"context latents, got {tuple(latents.shape)}.")
        features = self.net(latents)  # (n, C, h, w) -> (n, D_v, h, w)
        return features.flatten(2).transpose(1, 2) + self.position  # -> (n, D_v, h*w) -> (n, h*w, D_v)

    def forward(self, context_latents: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor | None:
        """context_latents (B, k, C, h, w), context_mask (B, k) bool -> (B, k, h*w, D_v); None without context.
        With a class head the tokens are kept as ``last_tokens``, for ``patch_class_loss`` on the same forward."""
        tokens = encode_context_images(self.tokenize, context_latents, context_mask)
        if self.class_head is not None:
            self.last_tokens = tokens
        return tokens

    def patch_class_loss(self, context_mask: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """L_cls on the tokens of the last forward: context_mask (B, k) bool, shares (B, k, h*w, patch_classes) with
        rows summing to 1 -> the soft cross-entropy, a scalar averaged over the tokens of the real context images."""
        if self.class_head is None:
            raise ValueError("this tokenizer has no class head: build it with patch_classes > 0 "
                             "(ContextConfig.patch_classes, train --patch-class-weight).")
        tokens = getattr(self, "last_tokens", None)
        if tokens is None or shares.shape != (*tokens.shape[:3], self.class_head.out_features):
            raise ValueError(f"patch class shares must be (B, k, {self.grid * self.grid}, "
                             f"{self.class_head.out_features}) for the last forward's tokens "
                             f"{None if tokens is None else tuple(tokens.shape)}, got {tuple(shares.shape)}.")
        return patch_class_cross_entropy(self.class_head(tokens[context_mask]), shares[context_mask])
        # (B, k, h*w, D_v)[mask] -> (n, h*w, D_v) -> (n, h*w, classes)

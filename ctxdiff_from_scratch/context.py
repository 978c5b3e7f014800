"""From k context images and a prompt to the cross-attention tokens [h^c ; h^V] of paper Eq. 3.

A frozen image encoder turns each of the k context images into N_v tokens of width D_v. This module never calls a
particular encoder: it takes those tokens, (B, k, N_v, D_v), so any encoder (or tokens cached on disk) works.

1. Combine over k (paper Sec. 3). ``sum`` (the paper's choice) and ``mean`` keep N_v tokens and do not depend on the
   order of the context images; ``concat`` keeps all k * N_v tokens (as IP-Adapter does with several images).
2. Project D_v -> D_c with one linear layer, so h^V lives in the text tokens' space.
3. Concatenate [null ; h^c ; h^V] with a key mask for the UNet's cross-attention (Eq. 3 plus one null token).

Nothing absent may leak into the output. Every token that must not be read is masked out of the attention *and*
zeroed: padded context slots (``context_mask`` False), padded prompt tokens (``text_mask`` False), and whole
prompts or contexts dropped per sample (``drop_prompt`` / ``drop_context``, used for classifier-free guidance).
So "prompt dropped" and "context dropped" are exactly representable and do not depend on the dropped content;
a sample with k = 0 is the same as one whose context is dropped. One learned null token is always present and
always valid: a sample with everything dropped still has a key to attend to (no empty softmax), and what it reads
there is learned -- the unconditional prediction of classifier-free guidance.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .config import COMBINE_MODES, ContextConfig


def combine_context_tokens(tokens: torch.Tensor, context_mask: torch.Tensor,
                           mode: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the token sequences of k context images into one; padded slots contribute nothing.

    tokens: (B, k, N_v, D) visual tokens; context_mask: (B, k) bool, True on real slots.
    Returns (tokens, mask): (B, N_v, D) and (B, N_v) for sum/mean, (B, k*N_v, D) and (B, k*N_v) for concat.
    A sample without any real slot gets an all-False mask.
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"combine mode {mode!r} is not one of {COMBINE_MODES}.")
    if tokens.ndim != 4:
        raise ValueError(f"context tokens must be (B, k, N_v, D_v), got shape {tuple(tokens.shape)}; the image "
                         "encoder's (B*k, N_v, D_v) output must be reshaped to (B, k, N_v, D_v).")
    if context_mask.dtype != torch.bool or context_mask.shape != tokens.shape[:2]:
        raise ValueError(f"context_mask must be a bool tensor of shape {tuple(tokens.shape[:2])} (B, k), "
                         f"got {context_mask.dtype} {tuple(context_mask.shape)}.")
    batch, k, n_v, dim = tokens.shape
    slot = context_mask[:, :, None, None]  # (B, k) -> (B, k, 1, 1)
    tokens = tokens.masked_fill(~slot, 0.0)  # padded slots may hold anything, even NaN: replace, never multiply
    if mode == "concat":
        mask = context_mask[:, :, None].expand(batch, k, n_v).reshape(batch, k * n_v)  # (B, k) -> (B, k*N_v)
        return tokens.reshape(batch, k * n_v, dim), mask  # (B, k, N_v, D) -> (B, k*N_v, D)
    # h^V = sum_i m_i f(v_i): the paper sums the k context token sequences
    combined = tokens.sum(dim=1)  # (B, k, N_v, D) -> (B, N_v, D)
    count = context_mask.sum(dim=1)  # (B,): the number of real context images
    if mode == "mean":
        # h^V = sum_i m_i f(v_i) / sum_i m_i
        combined = combined / count.clamp(min=1)[:, None, None].to(combined.dtype)  # (B,) -> (B, 1, 1)
    mask = (count > 0)[:, None].expand(batch, n_v)  # (B,) -> (B, N_v)
    return combined, mask


def encode_context_images(encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          context_mask: torch.Tensor) -> torch.Tensor | None:
    """Run ``encoder`` on the real context images only and scatter its tokens back into their slots.

    encoder: images (n, C, H, W) -> tokens (n, N_v, D_v), e.g. ``lambda x: image_encoder(x).tokens``
    images: (B, k, C, H, W) with padded slots; context_mask: (B, k) bool.
    Returns (B, k, N_v, D_v) with zeros in padded slots, or None when the batch holds no context image at all.
    """
    if images.ndim != 5 or context_mask.shape != images.shape[:2] or context_mask.dtype != torch.bool:
        raise ValueError(f"expected images (B, k, C, H, W) and a bool context_mask (B, k), got images "
                         f"{tuple(images.shape)} and context_mask {context_mask.dtype} {tuple(context_mask.shape)}.")
    if not context_mask.any():
        return None
    real = encoder(images[context_mask])  # (B, k, C, H, W)[mask] -> (n_real, C, H, W) -> (n_real, N_v, D_v)
    tokens = real.new_zeros(*context_mask.shape, *real.shape[1:])  # (B, k, N_v, D_v)
    tokens[context_mask] = real
    return tokens


class ContextConditioner(nn.Module):
    """Builds the keys/values of Eq. 3, [null ; h^c ; h^V], and their key mask (see the module docstring)."""

    def __init__(self, config: ContextConfig | None = None):
        super().__init__()
        self.config = config or ContextConfig()
        self.visual_proj = nn.Linear(self.config.visual_dim, self.config.context_dim)
        self.null_token = nn.Parameter(0.02 * torch.randn(self.config.context_dim))

    def visual_tokens(self, image_tokens: torch.Tensor, context_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """h^V = W_p combine_k(f(v_1), ..., f(v_k)) + b_p: (B, k, N_v, D_v) -> (B, N, D_c), mask (B, N)."""
        if image_tokens.ndim != 4 or image_tokens.shape[-1] != self.config.visual_dim:
            raise ValueError(f"image tokens must be (B, k, N_v, {self.config.visual_dim}), got "
                             f"{tuple(image_tokens.shape)}; ContextConfig.visual_dim must match the image encoder.")
        if context_mask is None:
            context_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device)
        combined, mask = combine_context_tokens(image_tokens, context_mask, self.config.combine)
        return self.visual_proj(combined), mask  # (B, N, D_v) -> (B, N, D_c)

    def forward(self, text_tokens: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                image_tokens: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                drop_prompt: torch.Tensor | None = None, drop_context: torch.Tensor | None = None,
                batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the cross-attention tokens (B, 1 + N_c + N, D_c) and their key mask (B, 1 + N_c + N).

        text_tokens:  h^c (B, N_c, D_c) from the text encoder, or None for no prompt; text_mask (B, N_c) bool
        image_tokens: (B, k, N_v, D_v) from the image encoder, or None for no context; context_mask (B, k) bool
        drop_prompt, drop_context: (B,) bool; True removes that sample's prompt / context (classifier-free guidance)
        batch_size:   B, needed only when there are neither text nor image tokens (the null token alone)
        """
        reference = text_tokens if text_tokens is not None else image_tokens
        if reference is None:
            if batch_size is None:
                raise ValueError("without text_tokens and image_tokens the batch size is unknown: pass "
                                 "batch_size=B (every sample then sees only the null token).")
            reference = self.null_token.new_zeros(batch_size, 0, self.config.context_dim)
        batch, device, dtype = reference.shape[0], reference.device, reference.dtype
        dim = self.config.context_dim
        drop_prompt = _per_sample_flag(drop_prompt, "drop_prompt", batch, device)
        drop_context = _per_sample_flag(drop_context, "drop_context", batch, device)

        if text_tokens is None:
            text_tokens = reference.new_zeros(batch, 0, dim)  # no prompt: N_c = 0
        if text_tokens.ndim != 3 or text_tokens.shape[0] != batch or text_tokens.shape[-1] != dim:
            raise ValueError(f"text tokens must be ({batch}, N_c, {dim}), got {tuple(text_tokens.shape)}; "
                             "ContextConfig.context_dim must equal the text encoder's width.")
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=device)
        if text_mask.dtype != torch.bool or text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(f"text_mask must be a bool tensor of shape {tuple(text_tokens.shape[:2])}, got "
                             f"{text_mask.dtype} {tuple(text_mask.shape)}; use attention_mask.bool().")
        text_mask = text_mask & ~drop_prompt[:, None]  # (B, N_c) & (B, 1)

        if image_tokens is None:
            visual = text_tokens.new_zeros(batch, 0, dim)  # no context: N = 0
            visual_mask = torch.ones(batch, 0, dtype=torch.bool, device=device)
        else:
            if image_tokens.shape[0] != batch:
                raise ValueError(f"image tokens hold {image_tokens.shape[0]} samples but the prompt tokens {batch}.")
            visual, visual_mask = self.visual_tokens(image_tokens, context_mask)
        visual_mask = visual_mask & ~drop_context[:, None]  # (B, N) & (B, 1)

        null = self.null_token.to(dtype).expand(batch, 1, dim)  # (D_c,) -> (B, 1, D_c)
        # Eq. 3's [h^c ; h^V], after one always-valid null token
        tokens = torch.cat([null, text_tokens, visual], dim=1)  # -> (B, 1 + N_c + N, D_c)
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=device), text_mask, visual_mask], dim=1)
        # Zero what is masked, so no attention implementation can read dropped or padded content.
        tokens = tokens.masked_fill(~mask[:, :, None], 0.0)  # (B, N) -> (B, N, 1)
        return tokens, mask


def _per_sample_flag(flag: torch.Tensor | None, name: str, batch: int, device: torch.device) -> torch.Tensor:
    if flag is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    if flag.dtype != torch.bool or flag.shape != (batch,):
        raise ValueError(f"{name} must be a bool tensor of shape ({batch},), one flag per sample, got "
                         f"{flag.dtype} {tuple(flag.shape)}.")
    return flag

"""Multi-head attention: self-attention over latent positions, and the cross-attention of paper Eq. 3.

Context Diffusion's UNet cross-attends from the latent z to text and visual tokens together (Eq. 3):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,  Q = W_Q z,  K = W_K [h^c ; h^V],  V = W_V [h^c ; h^V]

Key-padding masks are bool with True = "this key may be attended to". A query row whose keys are *all* masked has
nothing to read; its attention output is defined as exactly zero (so the layer returns only its output bias), never
NaN. The context conditioner (context.py) also always supplies one valid null token, so this fallback only matters
when the module is used on its own.

For visualisation, ``store_attention = True`` (or the ``record_attention`` context manager) computes the softmax
explicitly and keeps the probabilities on the module; the default path is ``scaled_dot_product_attention``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Self-attention (``context=None``) or cross-attention to ``context`` tokens of width ``context_dim``."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.is_cross = context_dim is not None
        inner = heads * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)
        self.store_attention = False
        self.attention_probs: torch.Tensor | None = None  # (B, heads, N_q, N_k) after a forward with store_attention

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)  # (B, N, H*d) -> (B, H, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N_q, query_dim); context: (B, N_k, context_dim) for cross-attention; key_mask: (B, N_k) bool."""
        if self.is_cross and context is None:
            raise ValueError("this is a cross-attention layer: pass context tokens (B, N_k, context_dim).")
        if not self.is_cross and context is not None:
            raise ValueError("this is a self-attention layer: it attends to x itself; do not pass context.")
        source = x if context is None else context
        if source.ndim != 3 or source.shape[0] != x.shape[0] or source.shape[-1] != self.to_k.in_features:
            raise ValueError(f"expected keys of shape ({x.shape[0]}, N_k, {self.to_k.in_features}), "
                             f"got {tuple(source.shape)}.")
        q = self._split_heads(self.to_q(x))  # Q = W_Q z
        k = self._split_heads(self.to_k(source))  # K = W_K [h^c ; h^V] (cross) or W_K z (self)
        v = self._split_heads(self.to_v(source))  # V = W_V [h^c ; h^V] (cross) or W_V z (self)
        attn_mask, has_key = None, None
        if key_mask is not None:
            if key_mask.dtype != torch.bool or key_mask.shape != source.shape[:2]:
                raise ValueError(f"key_mask must be a bool tensor of shape {tuple(source.shape[:2])} "
                                 f"(True = attend), got {key_mask.dtype} {tuple(key_mask.shape)}.")
            has_key = key_mask.any(dim=-1)  # (B,): False where a sample has no valid key at all
            # Such rows attend everywhere (finite softmax) and their output is zeroed below.
            attn_mask = (key_mask | ~has_key[:, None])[:, None, None, :]  # (B, N_k) -> (B, 1, 1, N_k)
        if self.store_attention:
            # softmax(Q K^T / sqrt(d)), written out so the probabilities can be kept
            scores = q @ k.transpose(-2, -1) * self.head_dim ** -0.5  # (B,H,N_q,d) @ (B,H,d,N_k) -> (B,H,N_q,N_k)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            if has_key is not None:
                probs = probs * has_key[:, None, None, None]  # rows without keys read nothing
            self.attention_probs = probs.detach()
            out = probs @ v  # (B, H, N_q, N_k) @ (B, H, N_k, d) -> (B, H, N_q, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N_q, d)
            if has_key is not None:
                out = out * has_key[:, None, None, None]  # rows without keys read nothing
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (B, H, N_q, d) -> (B, N_q, H*d)
        return self.to_out(out)


@contextmanager
def record_attention(model: nn.Module, kind: str = "cross") -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every attention layer of ``kind`` ("cross", "self" or "all") in ``model`` keeps its
    probabilities; yields a dict {layer name: (B, heads, N_q, N_k)} that each forward pass fills.

    >>> with record_attention(unet) as maps:
    ...     unet(x_t, t, tokens, token_mask)
    >>> maps["encoder.mid.block.transformer.blocks.0.cross_attn"].shape  # (B, heads, h*w, N_tokens)
    """
    if kind not in ("cross", "self", "all"):
        raise ValueError(f"kind must be 'cross', 'self' or 'all', got {kind!r}.")
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, MultiHeadAttention) and (kind == "all" or module.is_cross == (kind == "cross"))}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {kind} attention layers to record.")
    maps: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: maps.__setitem__(name, m.attention_probs))
             for name, module in layers.items()]
    previous = {name: module.store_attention for name, module in layers.items()}
    for module in layers.values():
        module.store_attention = True
    try:
        yield maps
    finally:
        for hook in hooks:
            hook.remove()
        for name, module in layers.items():
            module.store_attention = previous[name]
            module.attention_probs = None

"""CLIP-style context encoders: a small transformer for prompts, a conv-stem ViT for context images.

Context Diffusion (paper Sec. 3.2) encodes the prompt with a frozen CLIP text encoder into a token sequence h^c and
each context image with a frozen CLIP image encoder into visual tokens, which the diffusion model reads through
cross-attention. We cannot download CLIP, so we train tiny stand-ins on each world with CLIP's own objective
(symmetric InfoNCE with a learnable temperature, see :func:`clip_loss`) and freeze them afterwards, as the paper does.

Both encoders return an :class:`EncoderOutput`: the token sequence (what the diffusion model attends to), a pooled
embedding (what the contrastive loss compares) and a mask of the real tokens.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .checkpoint import config_from_dict, load_part, save_part


class EncoderOutput(NamedTuple):
    tokens: torch.Tensor  # (B, N, D)  token sequence for cross-attention (h^c for text, visual tokens for images)
    pooled: torch.Tensor  # (B, E)     embedding in the shared contrastive space (not normalised)
    mask: torch.Tensor    # (B, N)     True on real tokens, False on padding (all True for images)


def _check_transformer_sizes(name: str, dim: int, depth: int, heads: int, mlp_ratio: int, embed_dim: int) -> None:
    for field, value in (("dim", dim), ("depth", depth), ("heads", heads), ("mlp_ratio", mlp_ratio),
                         ("embed_dim", embed_dim)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}.{field} must be a positive integer, got {value!r}.")
    if dim % heads:
        raise ValueError(f"{name}: dim={dim} must be divisible by heads={heads}, since each attention head gets "
                         "dim // heads channels; e.g. dim=128 with heads=4.")


@dataclass
class TextEncoderConfig:
    """Sizes of the prompt encoder. ``vocab_size`` and ``max_length`` must match the tokenizer it reads."""

    vocab_size: int
    max_length: int = 32
    dim: int = 128        # D: width of the token sequence h^c
    depth: int = 2        # transformer blocks
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 128  # E: width of the pooled contrastive embedding

    PROFILES: ClassVar[dict[str, dict]] = {"tiny": dict(dim=32, depth=1, heads=2, embed_dim=32), "cpu": {}}

    def __post_init__(self) -> None:
        if not isinstance(self.vocab_size, int) or self.vocab_size < 5:
            raise ValueError(f"TextEncoderConfig.vocab_size={self.vocab_size!r} is too small: it must count the 4 "
                             "special tokens plus at least one word; pass tokenizer.vocab_size.")
        if not isinstance(self.max_length, int) or self.max_length < 3:
            raise ValueError(f"TextEncoderConfig.max_length={self.max_length!r} must be an integer >= 3 "
                             "(<bos>, a word, <eos>); pass tokenizer.max_length.")
        _check_transformer_sizes("TextEncoderConfig", self.dim, self.depth, self.heads, self.mlp_ratio,
                                 self.embed_dim)

    @classmethod
    def profile(cls, name: str, **overrides) -> "TextEncoderConfig":
        """A named size (``tiny`` for tests, ``cpu`` for the shipped models) with some fields overridden."""
        return cls(**{**_profile_values(cls, name), **overrides})


@dataclass
class ImageEncoderConfig:
    """Sizes of the context-image encoder: a strided conv stem, then a transformer over the grid of tokens.

    Every conv in ``stem_channels`` halves the resolution, so a 64x64 image with 3 stem convs gives an 8x8 grid:
    64 visual tokens, each seeing a 15x15-pixel patch through the stem and the whole image through attention.
    """

    image_size: int = 64
    in_channels: int = 3
    stem_channels: tuple[int, ...] = (32, 64, 128)
    dim: int = 128        # D_v: width of the visual tokens
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 128  # E: width of the pooled contrastive embedding

    PROFILES: ClassVar[dict[str, dict]] = {
        "tiny": dict(image_size=16, stem_channels=(8, 16), dim=32, depth=1, heads=2, embed_dim=32), "cpu": {}}

    def __post_init__(self) -> None:
        self.stem_channels = tuple(self.stem_channels)
        if not self.stem_channels or any(not isinstance(c, int) or c < 1 for c in self.stem_channels):
            raise ValueError(f"ImageEncoderConfig.stem_channels={self.stem_channels!r} must be a non-empty list of "
                             "positive channel counts, one per stride-2 conv, e.g. (32, 64, 128).")
        stride = 2 ** len(self.stem_channels)
        if not isinstance(self.image_size, int) or self.image_size < stride or self.image_size % stride:
            raise ValueError(f"ImageEncoderConfig.image_size={self.image_size!r} must be a positive multiple of "
                             f"{stride} (2 ** len(stem_channels)={len(self.stem_channels)} stride-2 convs); "
                             "resize the images or use fewer stem convs.")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"ImageEncoderConfig.in_channels={self.in_channels!r} must be a positive integer.")
        _check_transformer_sizes("ImageEncoderConfig", self.dim, self.depth, self.heads, self.mlp_ratio,
                                 self.embed_dim)

    @property
    def grid(self) -> int:
        """Tokens per side: the stem divides the image side by 2 per conv."""
        return self.image_size // 2 ** len(self.stem_channels)

    @classmethod
    def profile(cls, name: str, **overrides) -> "ImageEncoderConfig":
        """A named size (``tiny`` for tests, ``cpu`` for the shipped models) with some fields overridden."""
        return cls(**{**_profile_values(cls, name), **overrides})


def _profile_values(config_cls: type, name: str) -> dict:
    if name not in config_cls.PROFILES:
        raise ValueError(f"{config_cls.__name__} has no profile {name!r}; choose one of {list(config_cls.PROFILES)}.")
    return config_cls.PROFILES[name]


class Block(nn.Module):
    """Pre-norm transformer block (Vaswani et al. 2017, as in CLIP/ViT): x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim // heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D); mask: (B, N) bool, True on tokens that may be attended to (padding is False)."""
        x = x + self.attn(self.norm1(x), key_mask=mask)
        return x + self.mlp(self.norm2(x))


class _Pretrained(nn.Module):
    """``save_pretrained(folder)`` / ``from_pretrained(folder)`` through :mod:`ctxdiff_from_scratch.checkpoint`."""

    part_name: ClassVar[str]
    config_class: ClassVar[type]

    def save_pretrained(self, folder: str | Path, metadata: dict | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write ``folder/<part_name>.{safetensors,json}``; ``dtype=torch.float16`` halves the shipped size."""
        return save_part(folder, self.part_name, self, self.config, metadata=metadata, dtype=dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, frozen: bool = True):
        """Rebuild the encoder saved in ``folder``. ``frozen=True`` (the paper's setting) returns it in eval mode
        with gradients off; pass ``frozen=False`` to fine-tune it."""
        state, config, metadata = load_part(folder, cls.part_name)
        model = cls(config_from_dict(cls.config_class, config))
        model.load_state_dict(state)
        model.metadata = metadata
        if frozen:
            model.eval().requires_grad_(False)
        return model


class TextEncoder(_Pretrained):
    """Prompt -> h^c: token + position embeddings, ``depth`` transformer blocks, masked mean -> pooled embedding."""

    part_name = "text_encoder"
    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(config.max_length, config.dim))
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.proj = nn.Linear(config.dim, config.embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        """``input_ids`` (B, L) and ``attention_mask`` (B, L), as made by ``WordTokenizer`` (tokenizer.py)."""
        if input_ids.dim() != 2 or input_ids.shape[1] > self.config.max_length:
            raise ValueError(f"input_ids must be (batch, length <= {self.config.max_length}), got "
                             f"{tuple(input_ids.shape)}; tokenize prompts with the tokenizer saved beside this model.")
        if int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token id {int(input_ids.max())} is outside this encoder's vocabulary of "
                             f"{self.config.vocab_size}; the tokenizer does not match the text encoder.")
        mask = attention_mask.bool()
        x = self.token_embedding(input_ids) + self.position_embedding[: input_ids.shape[1]]  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)
        tokens = self.norm(x)
        # pooled = W (sum_i m_i h_i / sum_i m_i): the mean over real tokens, projected to the shared space
        weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L) -> (B, L, 1)
        pooled = self.proj((tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0))  # (B, L, D) -> (B, E)
        return EncoderOutput(tokens, pooled, mask)


class ImageEncoder(_Pretrained):
    """Image -> visual tokens: strided convs to a grid, + position embeddings, transformer, mean -> pooled."""

    part_name = "image_encoder"
    config_class = ImageEncoderConfig

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        layers, channels = [], config.in_channels
        for out in config.stem_channels:
            layers += [nn.Conv2d(channels, out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            channels = out
        # No normalisation in the stem: GroupNorm's statistics span the whole image, so the stem would stop being
        # local; the tokens get LayerNorm (per token) in the transformer instead.
        self.stem = nn.Sequential(*layers[:-1])
        self.to_tokens = nn.Linear(channels, config.dim)
        self.position_embedding = nn.Parameter(0.02 * torch.randn(config.grid ** 2, config.dim))
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.proj = nn.Linear(config.dim, config.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        """``images`` (B, C, H, W) in [0, 1] -> tokens (B, grid*grid, D_v), pooled (B, E), mask (B, grid*grid)."""
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"images must be (batch, {c}, {s}, {s}) in [0, 1], got {tuple(images.shape)}; "
                             "stack single images with images.unsqueeze(0) and resize to the configured size.")
        features = self.stem(2 * images - 1)  # [0, 1] -> [-1, 1]; (B, C, H, W) -> (B, C', g, g)
        x = self.to_tokens(features.flatten(2).transpose(1, 2))  # (B, C', g, g) -> (B, g*g, C') -> (B, g*g, D)
        x = x + self.position_embedding
        for block in self.blocks:
            x = block(x)
        tokens = self.norm(x)
        pooled = self.proj(tokens.mean(1))  # (B, N, D) -> (B, E)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, pooled, mask)


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021) between paired embeddings ``a`` (B, E) and ``b`` (B, E): the
    i-th row of ``a`` must pick the i-th row of ``b`` among all B rows, and vice versa.

    ``logit_scale`` is s = log(1/temperature), learned. A prompt that occurs twice in a batch gives two identical
    text embeddings; their two hard targets then sum to the same loss and gradient as one shared soft target, so
    duplicates need no special handling (the loss just cannot fall below their log 2).
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    # l_ij = exp(s) <a_i, b_j> / (|a_i| |b_j|): cosine similarity over temperature
    logits = logit_scale.exp() * a @ b.T  # (B, E) @ (E, B) -> (B, B)
    labels = torch.arange(len(a), device=a.device)
    # L = 1/2 [ -1/B sum_i log softmax_j(l_ij)[i]  -  1/B sum_j log softmax_i(l_ij)[j] ]: match a -> b and b -> a
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def retrieval_top1(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Fraction of queries (N, E) whose most cosine-similar candidate (N, E) is their own (same row index)."""
    similarity = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T  # (N, E) @ (E, N) -> (N, N)
    return (similarity.argmax(1) == torch.arange(len(queries), device=queries.device)).float().mean()


def config_summary(config) -> str:
    """One line ``field=value, ...`` for model cards and logs."""
    return ", ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))

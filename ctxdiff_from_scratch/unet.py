"""The latent denoiser: a UNet (Ronneberger et al. 2015; Ho et al. 2020; Rombach et al. 2022) whose transformer
blocks cross-attend to the prompt and context tokens [h^c ; h^V] (paper Eq. 3).

    x_t (B, C, h, w) --conv_in--> down path (ResBlocks [+ transformer], stride-2 convs) --> middle block
        --> up path (skip concatenation, ResBlocks [+ transformer], nearest upsampling) --> conv_out --> (B, C, h, w)

The encoder half (time embedding, conv_in, down path, middle block) is its own module, ``UNetEncoder``, so that the
ControlNet-style query adapter (adapter.py) can copy it and add its outputs to the skips and the middle output.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, (B,) -> (B, dim) (Vaswani et al. 2017, Sec. 3.5).

    emb(t) = [cos(t w_0), ..., cos(t w_{dim/2-1}), sin(t w_0), ..., sin(t w_{dim/2-1})],  w_i = max_period^(-2i/dim)
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]  # (B, 1) * (1, dim/2) -> (B, dim/2)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # -> (B, dim)


class ResBlock(nn.Module):
    """h = skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))) + W_t emb))): a ResNet block told the timestep (Ho et al. 2020)."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on latent positions z (Rombach et al. 2022, Sec. 3.3):

        z = z + SelfAttn(LN(z));  z = z + CrossAttn(LN(z), [h^c ; h^V])  (Eq. 3);  z = z + FF(LN(z))
    """

    def __init__(self, dim: int, config: UNetConfig):
        super().__init__()
        heads = dim // config.head_dim
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, config.head_dim)
        self.cross_attn = MultiHeadAttention(dim, heads, config.head_dim, context_dim=config.context_dim)
        self.ff = nn.Sequential(nn.Linear(dim, config.ff_mult * dim), nn.GELU(), nn.Linear(config.ff_mult * dim, dim))

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        z = z + self.self_attn(self.norm1(z))
        z = z + self.cross_attn(self.norm2(z), tokens, token_mask)
        return z + self.ff(self.norm3(z))


class SpatialTransformer(nn.Module):
    """Runs transformer blocks over the h*w positions of a feature map, as a residual: x + proj_out(blocks(...))."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_groups, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, config) for _ in range(config.transformer_depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        z = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, h*w, C)
        for block in self.blocks:
            z = block(z, tokens, token_mask)
        z = self.proj_out(z).transpose(1, 2).reshape(batch, channels, height, width)  # (B, h*w, C) -> (B, C, h, w)
        return x + z


class UNetBlock(nn.Module):
    """One step of a level: a ResBlock, then a transformer block where the level has attention."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, attention: bool):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, config.time_dim, config.norm_groups, config.dropout)
        self.transformer = SpatialTransformer(out_channels, config) if attention else None

    def forward(self, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.res(h, emb)
        return h if self.transformer is None else self.transformer(h, tokens, token_mask)


class MiddleBlock(nn.Module):
    """ResBlock -> transformer block -> ResBlock at the lowest resolution."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.block = UNetBlock(channels, channels, config, attention=True)
        self.res = ResBlock(channels, channels, config.time_dim, config.norm_groups, config.dropout)

    def forward(self, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor | None) -> torch.Tensor:
        return self.res(self.block(h, emb, tokens, token_mask), emb)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv: (B, C, h, w) -> (B, C, h/2, w/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 conv, (B, C, h, w) -> (B, C, 2h, 2w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNetEncoder(nn.Module):
    """Time embedding, input conv, down path and middle block: the half of the UNet that ControlNet copies.

    ``skip_channels`` lists the channels of the skip connections in the order ``forward`` returns them.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        base, time_dim = config.base_channels, config.time_dim
        self.time_embed = nn.Sequential(nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(config.latent_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.skip_channels = [base]
        channels = base
        for level, width in enumerate(config.level_channels):
            for _ in range(config.layers_per_level):
                self.down.append(UNetBlock(channels, width, config, config.attention_levels[level]))
                channels = width
                self.skip_channels.append(channels)
            if level < config.levels - 1:
                self.down.append(Downsample(channels))
                self.skip_channels.append(channels)
        self.mid = MiddleBlock(channels, config)
        self.out_channels = channels

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None = None,
                hint: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Return (middle output (B, C_mid, h', w'), skips (one per ``skip_channels``), time embedding (B, time_dim)).

        ``hint`` (B, base_channels, h, w) is added after the input conv (how ControlNet injects its condition).
        """
        t = check_unet_inputs(self.config, x, t, tokens, token_mask)
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))  # (B,) -> (B, base) -> (B, time_dim)
        h = self.conv_in(x)
        if hint is not None:
            if hint.shape != h.shape:
                raise ValueError(f"hint must have the shape of conv_in's output {tuple(h.shape)}, got "
                                 f"{tuple(hint.shape)}.")
            h = h + hint
        skips = [h]
        for block in self.down:
            h = block(h) if isinstance(block, Downsample) else block(h, emb, tokens, token_mask)
            skips.append(h)
        return self.mid(h, emb, tokens, token_mask), skips, emb


class UNet(nn.Module):
    """Predicts the diffusion target (noise or velocity) from x_t, t and the Eq. 3 tokens.

    ``down_residuals`` (one per skip) and ``mid_residual`` are added to the skips and to the middle output: this is
    how the query adapter (ControlNet, Zhang et al. 2023) steers the frozen-encoder UNet.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig.profile("cpu")
        self.encoder = UNetEncoder(self.config)
        self.up = nn.ModuleList()
        skip_channels = list(self.encoder.skip_channels)
        channels = self.encoder.out_channels
        for level in reversed(range(self.config.levels)):
            width = self.config.level_channels[level]
            for _ in range(self.config.layers_per_level + 1):
                self.up.append(UNetBlock(channels + skip_channels.pop(), width, self.config,
                                         self.config.attention_levels[level]))
                channels = width
            if level > 0:
                self.up.append(Upsample(channels))
        self.out = nn.Sequential(nn.GroupNorm(self.config.norm_groups, channels), nn.SiLU(),
                                 nn.Conv2d(channels, self.config.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor | None = None,
                down_residuals: list[torch.Tensor] | None = None,
                mid_residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, h, w) noisy latent; t: (B,) timesteps; tokens: (B, N, D_c); token_mask: (B, N) bool."""
        h, skips, emb = self.encoder(x, t, tokens, token_mask)
        if down_residuals is not None:
            if len(down_residuals) != len(skips) or any(r.shape != s.shape for r, s in zip(down_residuals, skips)):
                raise ValueError(f"down_residuals must be {len(skips)} tensors shaped like the skips "
                                 f"{[tuple(s.shape) for s in skips]}, got {[tuple(r.shape) for r in down_residuals]}; "
                                 "build them with a QueryAdapter made from this UNet's config.")
            skips = [s + r for s, r in zip(skips, down_residuals)]
        if mid_residual is not None:
            if mid_residual.shape != h.shape:
                raise ValueError(f"mid_residual must have shape {tuple(h.shape)}, got {tuple(mid_residual.shape)}.")
            h = h + mid_residual
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C, h, w) + (B, C_skip, h, w) -> (B, C + C_skip, h, w)
                h = block(h, emb, tokens, token_mask)
        return self.out(h)


def check_unet_inputs(config: UNetConfig, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                      token_mask: torch.Tensor | None) -> torch.Tensor:
    """Raise a clear error on a badly shaped input; return t as a (B,) tensor (a scalar t is broadcast)."""
    if x.ndim != 4 or x.shape[1] != config.latent_channels:
        raise ValueError(f"x_t must be (B, {config.latent_channels}, h, w), got {tuple(x.shape)}; "
                         "UNetConfig.latent_channels must match the autoencoder's latent channels.")
    batch, _, height, width = x.shape
    multiple = config.latent_multiple
    if height % multiple or width % multiple:
        raise ValueError(f"latent size {height}x{width} is not divisible by {multiple} = 2^(levels-1) for "
                         f"{config.levels} levels; use fewer levels (channel_mult) or a latent size divisible by "
                         f"{multiple}.")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must hold one timestep per sample, shape ({batch},), got {tuple(t.shape)}.")
    if tokens.ndim != 3 or tokens.shape[0] != batch or tokens.shape[-1] != config.context_dim:
        raise ValueError(f"tokens must be ({batch}, N, {config.context_dim}), got {tuple(tokens.shape)}; build "
                         "them with ContextConditioner and keep ContextConfig.context_dim == UNetConfig.context_dim.")
    if token_mask is not None and (token_mask.dtype != torch.bool or token_mask.shape != tokens.shape[:2]):
        raise ValueError(f"token_mask must be a bool tensor of shape {tuple(tokens.shape[:2])}, got "
                         f"{token_mask.dtype} {tuple(token_mask.shape)}.")
    return t

"""Sizes of the denoiser: the UNet, the context conditioner (Eq. 3's keys) and the query adapter (ControlNet).

Each part has a config dataclass. ``UNetConfig.profile(name)`` picks one of the size profiles below and lets a notebook
override a few fields: ``UNetConfig.profile("cpu", base_channels=32)``.

| profile | meant for | base channels, channel_mult, ResBlocks per level | UNet parameters |
|---|---|---|---|
| ``tiny`` | unit tests | 16, (1, 2), 1 | 0.24M |
| ``cpu`` (default) | a laptop CPU, training in minutes | 48, (1, 2, 2), 1 | 3.6M |
| ``colab`` | a free Colab GPU | 64, (1, 2, 4), 2 | 22.3M |
| ``gpu`` | a large GPU | 128, (1, 2, 4), 2 | 88.1M |

The ``cpu`` profile is lean where it matters: convolutions at the highest resolution dominate a CPU step, so level 0
has the fewest channels, one ResBlock per level and no attention. All profiles use ``context_dim=128``, the width of
the text encoder's ``cpu`` profile (encoders.py); override it together with ``ContextConfig.context_dim``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

COMBINE_MODES = ("sum", "mean", "concat")
TOKENIZERS = ("frozen", "latents", "frozen+latents")

UNET_PROFILES: dict[str, dict] = {
    "tiny": dict(base_channels=16, channel_mult=(1, 2), layers_per_level=1, attention_levels=(False, True),
                 head_dim=16, context_dim=32, norm_groups=4),
    "cpu": dict(base_channels=48, channel_mult=(1, 2, 2), layers_per_level=1,
                attention_levels=(False, True, True), head_dim=32, context_dim=128),
    "colab": dict(base_channels=64, channel_mult=(1, 2, 4), layers_per_level=2,
                  attention_levels=(False, True, True), head_dim=32, context_dim=128),
    "gpu": dict(base_channels=128, channel_mult=(1, 2, 4), layers_per_level=2,
                attention_levels=(False, True, True), head_dim=64, context_dim=128),
}


def _check_positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be positive, got {value}.")


@dataclass
class UNetConfig:
    """Shape of the latent-space UNet (paper Sec. 3 and Fig. 2: the LDM backbone).

    latent_channels:  channels C of the latent x_t (the autoencoder's latent channels)
    base_channels:    channels after the input conv; level i has ``base_channels * channel_mult[i]``
    channel_mult:     one multiplier per resolution level; the latent side must be divisible by 2^(levels-1)
    layers_per_level: ResBlocks per level on the way down (the way up has one more, as in the LDM UNet)
    attention_levels: one bool per level: add a transformer block (self-attention, Eq. 3 cross-attention,
                      feed-forward) after each ResBlock of that level. The middle block always has one.
    head_dim:         channels per attention head; heads = level channels // head_dim
    context_dim:      D_c, the width of the cross-attention tokens [h^c ; h^V] (the text encoder's width)
    transformer_depth, ff_mult, norm_groups, dropout: as in Stable Diffusion's UNet
    """

    latent_channels: int = 4
    base_channels: int = 48
    channel_mult: tuple[int, ...] = (1, 2, 2)
    layers_per_level: int = 1
    attention_levels: tuple[bool, ...] = (False, True, True)
    head_dim: int = 32
    context_dim: int = 128
    transformer_depth: int = 1
    ff_mult: int = 4
    norm_groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep tuples so configs compare equal.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        _check_positive("UNetConfig", latent_channels=self.latent_channels, base_channels=self.base_channels,
                        layers_per_level=self.layers_per_level, head_dim=self.head_dim,
                        context_dim=self.context_dim, transformer_depth=self.transformer_depth,
                        ff_mult=self.ff_mult, norm_groups=self.norm_groups)
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(f"UNetConfig.channel_mult must be a non-empty tuple of positive ints, got "
                             f"{self.channel_mult}; e.g. (1, 2, 2) for three resolution levels.")
        if len(self.attention_levels) != len(self.channel_mult):
            raise ValueError(f"UNetConfig.attention_levels has {len(self.attention_levels)} entries but channel_mult "
                             f"has {len(self.channel_mult)} levels; give one bool per level, e.g. "
                             f"{tuple(i > 0 for i in range(len(self.channel_mult)))}.")
        if self.base_channels % 2:
            raise ValueError(f"UNetConfig.base_channels={self.base_channels} must be even: the sinusoidal time "
                             "embedding has base_channels/2 cosines and as many sines.")
        for level, width in enumerate(self.level_channels):
            if width % self.norm_groups:
                raise ValueError(f"level {level} has {width} channels, not divisible by norm_groups="
                                 f"{self.norm_groups}; choose base_channels and channel_mult so every level's "
                                 "width is a multiple of norm_groups (or lower norm_groups).")
            if (self.attention_levels[level] or level == self.levels - 1) and width % self.head_dim:
                raise ValueError(f"level {level} has attention over {width} channels, not divisible by head_dim="
                                 f"{self.head_dim}; heads = channels // head_dim must be whole. Change head_dim, "
                                 "base_channels or channel_mult.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}.")

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def time_dim(self) -> int:
        """Width of the time embedding MLP's output, 4 * base_channels as in the DDPM UNet."""
        return 4 * self.base_channels

    @property
    def latent_multiple(self) -> int:
        """Latent height and width must be multiples of this: each level but the last halves them."""
        return 2 ** (self.levels - 1)

    @classmethod
    def profile(cls, name: str = "cpu", **overrides) -> "UNetConfig":
        """The named size profile (``cpu``, ``colab`` or ``gpu``) with ``overrides`` applied."""
        if name not in UNET_PROFILES:
            raise ValueError(f"unknown UNet profile {name!r}; choose one of {sorted(UNET_PROFILES)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"UNetConfig has no field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**{**UNET_PROFILES[name], **overrides})


@dataclass
class ContextConfig:
    """How k context images become the visual tokens h^V of Eq. 3.

    visual_dim:  D_v, the width of the frozen image encoder's tokens
    context_dim: D_c, the width of the text tokens h^c; h^V is projected to it (must equal UNetConfig.context_dim)
    combine:     how the k token sequences are merged: "sum" (paper), "mean", or "concat" (IP-Adapter style)
    tokenizer:   what each context image's tokens are: "frozen" (the frozen image encoder's, paper), "latents"
                 (a trainable tokenizer over the image's latent, one token per latent position; context_tokenizer.py)
                 or "frozen+latents" (both sequences, one after the other)
    latent_side: h = w of a latent (the autoencoder's), the grid of the "latents" tokenizer
    patch_classes: > 0 gives the "latents" tokenizer a linear head naming each token's patch class out of that many
                 (``train --patch-class-weight``: an auxiliary loss during training, unused when sampling); 0: none
    """

    visual_dim: int = 128
    context_dim: int = 128
    # The paper's sum is the default (also of `train --combine`): on ShapesWorld, concat gave no better context gain
    # and costs longer key sequences (docs/experiments.md, section 9).
    combine: str = "sum"
    tokenizer: str = "frozen"
    latent_side: int = 8
    patch_classes: int = 0

    def __post_init__(self) -> None:
        _check_positive("ContextConfig", visual_dim=self.visual_dim, context_dim=self.context_dim,
                        latent_side=self.latent_side)
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"ContextConfig.combine={self.combine!r} is not one of {COMBINE_MODES}.")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"ContextConfig.tokenizer={self.tokenizer!r} is not one of {TOKENIZERS}.")
        if self.patch_classes < 0 or (self.patch_classes and not self.learns_tokens):
            raise ValueError(f"ContextConfig.patch_classes={self.patch_classes}: a class head needs a trainable "
                             "tokenizer (tokenizer='latents' or 'frozen+latents') and a count >= 1, or 0 for none.")

    @property
    def learns_tokens(self) -> bool:
        """True when the denoiser tokenizes the context itself (it then needs ``Conditions.context_latents``)."""
        return self.tokenizer != "frozen"

    @property
    def reads_frozen_tokens(self) -> bool:
        """True when h^V includes the frozen image encoder's tokens (``Conditions.image_tokens``)."""
        return self.tokenizer != "latents"


@dataclass
class AdapterConfig:
    """The ControlNet-style query adapter (paper Sec. 3 and Fig. 2; Zhang et al. 2023).

    image_channels:     channels of the query map (3 for an RGB edge/depth/segmentation map)
    downsample_factor:  image side / latent side (the autoencoder's factor); a power of two, 1 in pixel space
    hint_channels:      width of the hint encoder's first conv; it doubles at each further stride-2 conv
    conditioning_scale: multiplies every residual the adapter adds to the UNet
    """

    image_channels: int = 3
    downsample_factor: int = 8
    hint_channels: int = 16
    conditioning_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("AdapterConfig", image_channels=self.image_channels, hint_channels=self.hint_channels,
                        downsample_factor=self.downsample_factor)
        if self.downsample_factor & (self.downsample_factor - 1):
            raise ValueError(f"AdapterConfig.downsample_factor={self.downsample_factor} must be a power of two "
                             "(image side / latent side, e.g. 4 for 64x64 images and 16x16 latents).")

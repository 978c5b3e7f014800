"""A tiny KL-regularised convolutional autoencoder: the first stage of latent diffusion (Rombach et al. 2022, Sec. 3).

Diffusion is expensive per pixel, so LDM first learns an encoder ``E`` that maps an image ``x`` (3, H, W) to a small
latent ``z = E(x)`` (c, H/f, W/f) and a decoder ``D`` with ``D(z) ~= x``. The diffusion model then works on ``z``.
With 64x64 images and f = 8, LDM's 4 channels give 4x8x8 = 256 numbers instead of 3x64x64 = 12288 (48x fewer); the
``cpu`` profile (the 45-minute recipe's, and GlyphWorld's shipped model) keeps f = 8 but uses 16 channels (16x8x8, 12x
fewer); ``cpu-c48`` (48x8x8, 4x fewer; the shipped ShapesWorld model) reconstructs ShapesWorld far better but is
harder for the denoiser to learn, see ``AUTOENCODER_PROFILES``.

LDM's "KL-reg" variant makes the encoder output a diagonal Gaussian posterior ``q(z|x) = N(mu(x), diag sigma^2(x))``
and adds a *small* KL penalty towards ``N(0, I)`` (LDM Sec. 3 / App. G, weight ~1e-6). The penalty is too weak to
make the latent truly Gaussian; it only stops the latent scale from drifting and keeps nearby latents decodable.
Its remaining arbitrary scale is removed afterwards with one number, the *scale factor*: LDM multiplies latents by
``1 / std(z)`` measured on training data so that the diffusion model sees unit-variance inputs.

Compared with LDM's first stage we keep the shape (ResNet blocks, strided downsampling, nearest upsampling, GroupNorm,
a Gaussian posterior) but make it CPU sized:

* a **pixel-unshuffle** first stage folds each ``u x u`` pixel patch into channels, so no convolution ever runs at
  full resolution (full-resolution convolutions dominate the cost at 64x64; docs/autoencoders.md);
* **DC-AE shortcuts** (Chen et al. 2024, "Deep Compression Autoencoder"): every resize has a parameter-free twin
  (``channel_shortcut``) and every learned branch starts at zero, so training starts from "average blocks, paint them
  back" and only learns the detail. In our runs this was the difference between a plateau and steady progress;
* one ResNet block per level and no attention block (at 8x8 a few 3x3 convolutions already see the whole image);
* no perceptual (LPIPS) or adversarial loss: no pretrained LPIPS weights may be downloaded, and a GAN doubles the cost.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import config_from_dict, load_part, save_part

CHECKPOINT_NAME = "autoencoder"
# LDM clamps the log-variance so exp() never over/underflows in fp16 or fp32.
LOGVAR_RANGE = (-30.0, 20.0)
# The posterior starts nearly deterministic (std = exp(-3) ~ 0.05): with a bias of 0 the decoder would first see
# z = mu + 1.0 * eps, noise larger than the initial latents themselves. The weak KL term never pulls it back up: the
# shipped encoders end at sigma ~ 0.001.
INITIAL_LOGVAR = -6.0


@dataclass
class AutoencoderConfig:
    """Shape of the autoencoder. The downsampling factor is ``f = unshuffle * 2 ** (len(channels) - 1)``.

    image_size:      side of the square input images, e.g. 64
    image_channels:  3 for RGB
    latent_channels: channels ``c`` of the latent (c, H/f, W/f); LDM's f=8 models use 4
    unshuffle:       pixel-unshuffle factor of the cheap first stage (1 = start with a full-resolution conv)
    channels:        convolution width per level; every level after the first halves the resolution
    blocks_per_level: ResNet blocks per level (encoder and decoder alike)
    norm_groups:     GroupNorm groups; every width in ``channels`` must be divisible by it
    scale_factor:    latents are multiplied by this so they have unit variance (set by ``estimate_scale_factor``)
    """

    image_size: int = 64
    image_channels: int = 3
    latent_channels: int = 4
    unshuffle: int = 2
    channels: tuple[int, ...] = (24, 48, 96)
    blocks_per_level: int = 1
    norm_groups: int = 8
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)  # JSON gives lists; keep the config hashable
        positive = {"image_size": self.image_size, "image_channels": self.image_channels,
                    "latent_channels": self.latent_channels, "unshuffle": self.unshuffle,
                    "blocks_per_level": self.blocks_per_level, "norm_groups": self.norm_groups}
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be a positive integer, got {value!r}.")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"AutoencoderConfig.channels must be a non-empty tuple of positive widths, "
                             f"got {self.channels!r}; e.g. (32, 64, 128) for three levels.")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"AutoencoderConfig.channels {self.channels}: widths {bad} are not divisible by "
                             f"norm_groups={self.norm_groups}; GroupNorm splits channels into equal groups. "
                             f"Use multiples of {self.norm_groups} or a smaller norm_groups.")
        # The parameter-free shortcuts (channel_shortcut) average or repeat channels in whole groups.
        pixels = self.image_channels * self.unshuffle**2
        pairs = [(f"image_channels * unshuffle**2 = {pixels}", pixels, f"channels[0] = {self.channels[0]}",
                  self.channels[0]),
                 (f"channels[-1] = {self.channels[-1]}", self.channels[-1], f"latent_channels = "
                  f"{self.latent_channels}", self.latent_channels)]
        pairs += [(f"4 * channels[{i}] = {4 * a}", 4 * a, f"channels[{i + 1}] = {b}", b)
                  for i, (a, b) in enumerate(zip(self.channels[:-1], self.channels[1:]))]
        for name_a, a, name_b, b in pairs:
            if max(a, b) % min(a, b):
                raise ValueError(f"AutoencoderConfig: {name_a} and {name_b} must divide one another: the DC-AE "
                                 "shortcuts average or repeat whole groups of channels. E.g. with RGB and "
                                 "unshuffle=2, widths (24, 48, 96) and latent_channels=4 work.")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by the downsampling factor "
                             f"f = unshuffle * 2**(len(channels)-1) = {self.downsample_factor}; pick an image size "
                             f"that is a multiple of {self.downsample_factor}, or fewer levels / a smaller unshuffle.")
        if not (self.scale_factor > 0 and math.isfinite(self.scale_factor)):
            raise ValueError(f"AutoencoderConfig.scale_factor must be a positive finite number, got "
                             f"{self.scale_factor!r}; it is 1 / std of the unscaled latents.")

    @property
    def downsample_factor(self) -> int:
        """f: how many pixels one latent cell covers along each side."""
        return self.unshuffle * 2 ** (len(self.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H/f, W/f) of one image's latent."""
        side = self.image_size // self.downsample_factor
        return (self.latent_channels, side, side)

    @classmethod
    def profile(cls, name: str, **overrides) -> "AutoencoderConfig":
        """A named size: ``tiny`` (tests), ``cpu`` (64x64 -> 16x8x8), ``cpu-c48`` (48x8x8), ``cpu-c4``
        (LDM's 4x8x8), ``cpu-f4`` (f=4 -> 4x16x16). ``overrides`` replace single fields, e.g. ``image_size=32``."""
        if name not in AUTOENCODER_PROFILES:
            raise ValueError(f"unknown autoencoder profile {name!r}; choose one of {sorted(AUTOENCODER_PROFILES)}.")
        return cls(**{**AUTOENCODER_PROFILES[name], **overrides})


# "cpu" keeps f = 8 (8x8 latents: the UNet's cheap size) but uses 16 latent channels instead of LDM's 4: a UNet step
# costs about the same on 16x8x8 as on 4x8x8 (f = 4 would cost far more), while thin edges survive the autoencoder.
# "cpu-c48" triples the channels again: ShapesWorld's styled images reconstruct far better, but the denoiser has to
# model 3x as many numbers and learns them more slowly, so the 45-minute recipe keeps "cpu" and the shipped
# ShapesWorld model pairs "cpu-c48" with a longer-trained denoiser. Measurements: docs/autoencoders.md and
# docs/experiments.md, section 15.
AUTOENCODER_PROFILES: dict[str, dict] = {
    "tiny": dict(image_size=32, channels=(12, 24), unshuffle=2, latent_channels=4, norm_groups=4),
    "cpu": dict(image_size=64, channels=(24, 48, 96), unshuffle=2, latent_channels=16),
    "cpu-c48": dict(image_size=64, channels=(24, 48, 96), unshuffle=2, latent_channels=48),
    "cpu-c4": dict(image_size=64, channels=(24, 48, 96), unshuffle=2, latent_channels=4),
    "cpu-f4": dict(image_size=64, channels=(24, 48), unshuffle=2, latent_channels=4),
}


class DiagonalGaussian:
    """The encoder's posterior ``q(z|x) = N(mean, diag exp(logvar))``, one Gaussian per latent element."""

    def __init__(self, moments: torch.Tensor):
        mean, logvar = moments.chunk(2, dim=1)  # (B, 2c, h, w) -> 2 x (B, c, h, w)
        self.mean = mean
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # reparameterisation trick: z = mu + sigma * eps, eps ~ N(0, I), so gradients flow into mu and sigma
        # eps is drawn where the generator lives (a CPU generator may drive a model on a GPU), then moved
        where = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype, device=where)
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) per latent element, shape (B, c, h, w)."""
        return kl_to_standard_normal(self.mean, self.logvar)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL divergence of ``N(mean, exp(logvar))`` from ``N(0, 1)``."""
    # KL(N(mu, s^2) || N(0, 1)) = 1/2 (mu^2 + s^2 - 1 - log s^2)
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias so its branch starts silent and the model starts as its shortcuts alone.

    Zero-initialising the last layer of every residual branch (Goyal et al. 2017; ``zero_module`` in diffusers) keeps
    the fixed DC-AE shortcuts in charge at step 0; each branch still gets gradients and grows in from there.
    """
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """LDM's ResNet block at a fixed width: x + conv(SiLU(GroupNorm(conv(SiLU(GroupNorm(x))))))."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, channels)
        self.conv2 = zero_init(nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def channel_shortcut(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Change the channel count without parameters: average groups of neighbouring channels, or repeat each one.

    DC-AE's "residual autoencoding" shortcut (Chen et al. 2024): next to every learned resize it adds this fixed
    path, so an untrained encoder already outputs local pixel averages and an untrained decoder already upsamples
    them; the convolutions only learn the residual detail, which trains far faster than learning the resize too.
    """
    b, c, h, w = x.shape
    if c >= out_channels:
        # (B, C, H, W) -> (B, C_out, C / C_out, H, W) -> (B, C_out, H, W): mean of each group of C / C_out channels
        return x.view(b, out_channels, c // out_channels, h, w).mean(dim=2)
    return x.repeat_interleave(out_channels // c, dim=1)  # (B, C, H, W) -> (B, C_out, H, W)


class Downsample(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H/2, W/2): a strided 3x3 conv plus the space-to-channel shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = zero_init(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pixel_unshuffle: (B, C_in, H, W) -> (B, 4 C_in, H/2, W/2), each 2x2 patch moved into channels
        return self.conv(x) + channel_shortcut(F.pixel_unshuffle(x, 2), self.out_channels)


class Upsample(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, 2H, 2W): nearest upsampling + 3x3 conv, plus the channel-to-space shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = zero_init(nn.Conv2d(in_channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))  # (B, C_in, H, W) -> (B, C_out, 2H, 2W)
        # (B, C_in, H, W) -> (B, 4 C_out, H, W) -> pixel_shuffle -> (B, C_out, 2H, 2W)
        return h + F.pixel_shuffle(channel_shortcut(x, 4 * self.out_channels), 2)


def resnet_levels(widths: Sequence[int], config: AutoencoderConfig, resize: type[nn.Module]) -> nn.Sequential:
    """``blocks_per_level`` ResBlocks at each width, with ``resize(width, next_width)`` between consecutive levels
    (``Downsample`` in the encoder, ``Upsample`` in the decoder, which walks the widths in reverse)."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers += [ResBlock(width, config.norm_groups) for _ in range(config.blocks_per_level)]
        if i < len(widths) - 1:
            layers.append(resize(width, widths[i + 1]))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x (B, 3, H, W) in [-1, 1] -> posterior moments (B, 2c, H/f, W/f): mean and log-variance stacked."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        ch, self.latent_channels = config.channels, config.latent_channels
        self.unshuffle = nn.PixelUnshuffle(config.unshuffle)
        self.conv_in = zero_init(nn.Conv2d(config.image_channels * config.unshuffle**2, ch[0], 3, padding=1))
        self.levels = resnet_levels(ch, config, Downsample)
        self.norm_out = nn.GroupNorm(config.norm_groups, ch[-1])
        self.conv_out = zero_init(nn.Conv2d(ch[-1], 2 * config.latent_channels, 3, padding=1))
        with torch.no_grad():
            self.conv_out.bias[config.latent_channels:] = INITIAL_LOGVAR  # the log-variance half of the moments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unshuffle(x)  # (B, 3, H, W) -> (B, 3 u^2, H/u, W/u): each u x u patch becomes channels
        h = self.conv_in(x) + channel_shortcut(x, self.conv_in.out_channels)  # -> (B, ch0, H/u, W/u)
        h = self.levels(h)  # (B, ch0, H/u, W/u) -> (B, ch_last, H/f, W/f)
        moments = self.conv_out(F.silu(self.norm_out(h)))  # (B, ch_last, h, w) -> (B, 2c, h, w)
        shortcut = channel_shortcut(h, self.latent_channels)  # (B, ch_last, h, w) -> (B, c, h, w), for the mean
        return moments + torch.cat([shortcut, torch.zeros_like(shortcut)], dim=1)  # 2 x (B, c, h, w) -> (B, 2c, h, w)


class Decoder(nn.Module):
    """z (B, c, H/f, W/f) -> image (B, 3, H, W), roughly in [-1, 1] (no output squashing, as in LDM)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        ch = config.channels[::-1]  # widest first: the decoder mirrors the encoder
        self.conv_in = zero_init(nn.Conv2d(config.latent_channels, ch[0], 3, padding=1))
        self.levels = resnet_levels(ch, config, Upsample)
        self.norm_out = nn.GroupNorm(config.norm_groups, ch[-1])
        self.conv_out = zero_init(nn.Conv2d(ch[-1], config.image_channels * config.unshuffle**2, 3, padding=1))
        self.shuffle = nn.PixelShuffle(config.unshuffle)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z) + channel_shortcut(z, self.conv_in.out_channels)  # (B, c, h, w) -> (B, ch_last, h, w)
        h = self.levels(h)  # (B, ch_last, h, w) -> (B, ch0, H/u, W/u)
        out = self.conv_out(F.silu(self.norm_out(h))) + channel_shortcut(h, self.conv_out.out_channels)
        return self.shuffle(out)  # (B, 3 u^2, H/u, W/u) -> (B, 3, H, W)


class Autoencoder(nn.Module):
    """Encoder + decoder + diagonal Gaussian posterior; images in [0, 1], latents scaled to unit variance.

    >>> ae = Autoencoder(AutoencoderConfig.profile("tiny"))
    >>> z = ae.encode(torch.rand(2, 3, 32, 32))   # (2, 4, 8, 8), scaled posterior mean
    >>> ae.decode(z).shape                        # back to (2, 3, 32, 32), in [0, 1]
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def _check_images(self, x: torch.Tensor) -> None:
        c, s = self.config.image_channels, self.config.image_size
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % self.config.downsample_factor \
                or x.shape[3] % self.config.downsample_factor:
            raise ValueError(f"expected images of shape (B, {c}, H, W) with H and W multiples of "
                             f"f={self.config.downsample_factor} (trained at {s}x{s}), got {tuple(x.shape)}; "
                             "add a batch dimension with x.unsqueeze(0) for a single image.")

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) for images ``x`` (B, 3, H, W) in [0, 1]; its mean/std are *unscaled* latents."""
        self._check_images(x)
        return DiagonalGaussian(self.encoder(2.0 * x - 1.0))  # LDM works on images in [-1, 1]

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Training pass: (reconstruction in [-1, 1] space, posterior). The decoder sees a *sample* of q(z|x)."""
        posterior = self.posterior(x)
        return self.decoder(posterior.sample(generator)), posterior

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled latents (B, c, H/f, W/f) with roughly unit variance.

        ``sample=False`` returns the posterior mean (deterministic, what a diffusion model is trained on);
        ``sample=True`` draws ``z ~ q(z|x)`` with ``generator``.
        """
        posterior = self.posterior(x)
        z = posterior.sample(generator) if sample else posterior.mean
        return self.config.scale_factor * z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, 3, h*f, w*f) clamped to [0, 1]."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents of shape (B, {self.config.latent_channels}, h, w), got "
                             f"{tuple(z.shape)}; latents come from Autoencoder.encode.")
        x = self.decoder(z / self.config.scale_factor)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)  # [-1, 1] -> [0, 1]

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of the encoder, the decoder and the whole model."""
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        return {"encoder": enc, "decoder": dec, "total": enc + dec}

    def save_pretrained(self, folder: str | Path, metadata: dict | None = None,
                        dtype: torch.dtype | None = torch.float16) -> Path:
        """Write ``folder/autoencoder.{safetensors,json}`` (fp16 weights by default, to keep shipped files small)."""
        return save_part(folder, CHECKPOINT_NAME, self, self.config, metadata=metadata, dtype=dtype)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> "Autoencoder":
        """Rebuild the model from ``folder/autoencoder.{safetensors,json}``; returned in eval mode."""
        state, config_dict, _ = load_part(folder, CHECKPOINT_NAME)
        model = cls(config_from_dict(AutoencoderConfig, config_dict))
        model.load_state_dict(state)
        return model.to(device).eval()


@torch.no_grad()
def estimate_scale_factor(model: Autoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """1 / std of the unscaled posterior means of ``images`` (N, 3, H, W): the LDM latent scale factor.

    One scalar over all channels and positions, as in LDM, so that ``scale_factor * z`` has unit variance.
    """
    means = torch.cat([model.posterior(batch).mean for batch in images.split(batch_size)])  # (N, c, h, w)
    std = means.float().std().item()
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"latent std is {std}; the encoder produced constant or non-finite latents, so no scale "
                         "factor can be estimated. Train the autoencoder (or check the images) first.")
    return 1.0 / std


def with_scale_factor(config: AutoencoderConfig, scale_factor: float) -> AutoencoderConfig:
    """A copy of ``config`` with a new latent scale factor (configs are values; models keep theirs)."""
    return dataclasses.replace(config, scale_factor=float(scale_factor))

"""The query adapter: how the query map (an edge map, a depth map, ...) steers the UNet (paper Sec. 3, Fig. 2).

Context Diffusion feeds the query image through a ControlNet (Zhang et al. 2023, "Adding Conditional Control to
Text-to-Image Diffusion Models"):

    c        = Z_hint(H(query))                       added to E_copy's input-conv features, conv_in(x_t) + c
    y_skip_i = skip_i + s * Z_i(E_copy(x_t, c, t, [h^c ; h^V])_skip_i)      (ControlNet Eq. 2:
    y_mid    = mid    + s * Z_mid(E_copy(x_t, c, t, [h^c ; h^V])_mid)        y_c = F(x) + Z(F_copy(x + Z(c))))

H is a small hint encoder from image space to latent resolution, E_copy a trainable copy of the UNet's encoder
(time embedding, input conv, down path, middle block) initialised from the base UNet, Z_* zero-initialised convs,
and s the ``conditioning_scale``. Because every Z starts at zero, the adapter adds exactly nothing at initialisation:
training starts from the base model's behaviour. At the first step only the zero convs get gradients (everything
upstream of a zero weight gets none); after one update the gradients reach the copy and the hint encoder.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AdapterConfig, UNetConfig
from .unet import UNet, UNetEncoder


def zero_conv(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Conv2d:
    """A conv whose weight and bias start at zero (ControlNet's "zero convolution")."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class HintEncoder(nn.Module):
    """Query map (B, C_img, H, W) -> feature map (B, base_channels, H/f, W/f) that starts at exactly zero.

    One stride-2 3x3 conv per halving (``hint_channels`` wide, doubling each time; a single stride-1 conv when f = 1),
    SiLU between them, then a zero-initialised 3x3 conv. ControlNet's hint block also runs stride-1 convs at every
    resolution; we skip those because full-resolution convolutions dominate CPU cost.
    """

    def __init__(self, config: AdapterConfig, out_channels: int):
        super().__init__()
        halvings = config.downsample_factor.bit_length() - 1  # log2(f)
        layers: list[nn.Module] = []
        channels = config.image_channels
        for i in range(max(halvings, 1)):
            width = config.hint_channels * 2 ** i
            layers += [nn.Conv2d(channels, width, 3, stride=2 if i < halvings else 1, padding=1), nn.SiLU()]
            channels = width
        layers.append(zero_conv(channels, out_channels, kernel_size=3))
        self.net = nn.Sequential(*layers)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return self.net(query)


class QueryAdapter(nn.Module):
    """ControlNet-style adapter: returns the residuals that ``UNet.forward`` adds to its skips and middle output.

    >>> adapter = QueryAdapter.from_unet(unet)
    >>> down, mid = adapter(x_t, t, query, tokens, token_mask)
    >>> eps = unet(x_t, t, tokens, token_mask, down_residuals=down, mid_residual=mid)
    """

    def __init__(self, unet_config: UNetConfig, config: AdapterConfig | None = None):
        super().__init__()
        self.unet_config = unet_config
        self.config = config or AdapterConfig()
        self.hint = HintEncoder(self.config, unet_config.base_channels)
        self.encoder = UNetEncoder(unet_config)
        self.zero_convs = nn.ModuleList(zero_conv(c, c) for c in self.encoder.skip_channels)
        self.mid_zero_conv = zero_conv(self.encoder.out_channels, self.encoder.out_channels)

    @classmethod
    def from_unet(cls, unet: UNet, config: AdapterConfig | None = None) -> "QueryAdapter":
        """An adapter whose encoder copy starts from ``unet``'s encoder weights (ControlNet's "trainable copy")."""
        adapter = cls(unet.config, config)
        adapter.encoder.load_state_dict(unet.encoder.state_dict())
        return adapter.to(next(unet.parameters()).device)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, query: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor | None = None, conditioning_scale: float | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """query: (B, C_img, h*f, w*f) for a latent x_t (B, C, h, w). Returns (down_residuals, mid_residual).

        ``conditioning_scale`` overrides ``config.conditioning_scale`` for this call (0 turns the query off).
        """
        factor = self.config.downsample_factor
        expected = (x_t.shape[0], self.config.image_channels, x_t.shape[-2] * factor, x_t.shape[-1] * factor)
        if query.shape != expected:
            raise ValueError(f"query must be {expected} for a latent of shape {tuple(x_t.shape)} and "
                             f"downsample_factor={factor}, got {tuple(query.shape)}; set "
                             "AdapterConfig.downsample_factor to image side / latent side.")
        scale = self.config.conditioning_scale if conditioning_scale is None else conditioning_scale
        mid, skips, _ = self.encoder(x_t, t, tokens, token_mask, hint=self.hint(query))
        down_residuals = [scale * conv(skip) for conv, skip in zip(self.zero_convs, skips)]
        return down_residuals, scale * self.mid_zero_conv(mid)


def freeze_base_encoder(unet: UNet) -> UNet:
    """Stop gradients to the base UNet's encoder half (time embedding, input conv, down path, middle block).

    In stage 2 the paper keeps the encoder of the LDM backbone frozen and trains the adapter and the decoder half.
    """
    unet.encoder.requires_grad_(False)
    return unet

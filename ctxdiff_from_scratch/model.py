"""The Context Diffusion model: frozen encoders + a trained latent denoiser, in one object (paper Sec. 3, Fig. 2).

    query (B, 3, H, W) -------------------------------------------------> QueryAdapter --residuals--+
    context (B, k, 3, H, W) -> frozen ImageEncoder -> (B, k, N_v, D_v) --+                         |
    prompts -> tokenizer -> frozen TextEncoder -> h^c (B, N_c, D_c) -----+-> ContextConditioner     v
                                       [null ; h^c ; h^V] (B, 1+N_c+N, D_c) -> UNet(z_t, t) -> eps or v

The frozen parts (autoencoder, image encoder, text encoder, tokenizer) are trained beforehand (autoencoder.py,
encoders.py). The trained parts (conditioner, UNet, adapter) form one ``Denoiser`` module: the thing the optimiser,
the EMA and distributed training see, and what ``denoiser.safetensors`` holds. Training minimises paper Eq. 2,

    L = E_{z_0, eps, t, query, c, V} || target(z_0, eps, t) - model(z_t, t, query, [h^c ; h^V]) ||^2

with target = eps or v (``ModelConfig.schedule.prediction_type``), and the cross-attention of Eq. 3 reading the
prompt tokens h^c and the visual tokens h^V. Without an adapter (training stage 1) the query is ignored: the model is
the base LDM p(image | prompt, visual context).

A model folder holds ``autoencoder.*``, ``image_encoder.*``, ``text_encoder.*`` and ``tokenizer.json`` (the latter
two only for worlds with prompts) and ``denoiser.{safetensors,json}``: see ``save_pretrained`` / ``from_pretrained``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import QueryAdapter
from .autoencoder import Autoencoder, AutoencoderConfig
from .checkpoint import config_from_dict, load_part, save_part
from .config import AdapterConfig, ContextConfig, UNetConfig
from .context import ContextConditioner, encode_context_images
from .context_tokenizer import LatentTokenizer
from .encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig
from .schedule import NoiseSchedule, ScheduleConfig
from .tokenizer import WordTokenizer
from .unet import UNet

DENOISER_NAME = "denoiser"
TOKENIZER_FILE = "tokenizer.json"
# v-prediction: a prototype read colours from the context within minutes, where eps-prediction did not
# (docs/experiments.md, section 16).
# The cosine schedule ends near pure noise (ab_T ~ 1e-9), so sampling from N(0, I) matches training.
DEFAULT_SCHEDULE = ScheduleConfig(beta_schedule="cosine", prediction_type="v_prediction")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the trained denoiser (the frozen parts carry their own configs).

    world:      which world the model was trained on ("shapes", "glyphs"); informational
    image_size: side of the images (query, target) in pixels = the autoencoder's image size
    unet, context, adapter: the parts' configs; ``adapter=None`` is the stage-1 base model without a query
    baseline:   None for Context Diffusion; "prompt-diffusion" for the PD-style baseline (baselines/prompt_diffusion.py)
    schedule:   the noise schedule, including ``prediction_type`` ("v_prediction" by default)
    """

    world: str = "shapes"
    image_size: int = 64
    unet: UNetConfig = field(default_factory=lambda: UNetConfig.profile("cpu"))
    context: ContextConfig = field(default_factory=ContextConfig)
    adapter: AdapterConfig | None = None
    schedule: ScheduleConfig = DEFAULT_SCHEDULE
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.context.context_dim != self.unet.context_dim:
            raise ValueError(f"ContextConfig.context_dim={self.context.context_dim} differs from "
                             f"UNetConfig.context_dim={self.unet.context_dim}; the UNet cross-attends to the "
                             "conditioner's tokens, so both must equal the text encoder's width.")

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of ``to_dict`` (what ``denoiser.json`` stores)."""
        values = dict(values)
        nested = {"unet": UNetConfig, "context": ContextConfig, "adapter": AdapterConfig, "schedule": ScheduleConfig}
        for name, cls_ in nested.items():
            if values.get(name) is not None:
                values[name] = config_from_dict(cls_, values[name])
        return config_from_dict(cls, values)

    @classmethod
    def from_parts(cls, autoencoder: Autoencoder, image_encoder: ImageEncoder, text_encoder: TextEncoder | None,
                   world: str = "shapes", unet_profile: str = "cpu", adapter: bool = False,
                   schedule: ScheduleConfig = DEFAULT_SCHEDULE, combine: str = ContextConfig.combine,
                   tokenizer: str = ContextConfig.tokenizer, patch_classes: int = 0,
                   **unet_overrides) -> "ModelConfig":
        """A config whose widths fit the given frozen parts: latent channels from the autoencoder, D_v from the
        image encoder, D_c from the text encoder (or D_v when the world has no prompts)."""
        context_dim = text_encoder.config.dim if text_encoder is not None else image_encoder.config.dim
        unet = UNetConfig.profile(unet_profile, **{"latent_channels": autoencoder.config.latent_channels,
                                                   "context_dim": context_dim, **unet_overrides})
        context = ContextConfig(visual_dim=image_encoder.config.dim, context_dim=context_dim, combine=combine,
                                tokenizer=tokenizer, latent_side=autoencoder.config.latent_shape[-1],
                                patch_classes=patch_classes)
        adapter_config = AdapterConfig(downsample_factor=autoencoder.config.downsample_factor) if adapter else None
        return cls(world=world, image_size=autoencoder.config.image_size, unet=unet, context=context,
                   adapter=adapter_config, schedule=schedule)


@dataclass
class Conditions:
    """Frozen-encoder outputs for a batch: computed once, reused at every denoising step (and cached in training).

    text_tokens:  (B, N_c, D_c) h^c, or None when there is no prompt (or no text encoder); text_mask (B, N_c) bool
    image_tokens: (B, k, N_v, D_v) per context image, or None when k = 0; context_mask (B, k) bool
    query:        (B, 3, H, W) in [0, 1], always present (ignored by a model without adapter)
    context_latents: (B, k, C, h, w) scaled latents of the context images, only for a model that tokenizes them
                  itself (``ContextConfig.tokenizer = "latents"``); else None
    """

    text_tokens: torch.Tensor | None
    text_mask: torch.Tensor | None
    image_tokens: torch.Tensor | None
    context_mask: torch.Tensor | None
    query: torch.Tensor
    context_latents: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.query.shape[0]

    def _map(self, fn) -> "Conditions":
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return Conditions(*(None if v is None else fn(v) for v in values))

    def to(self, device: torch.device | str) -> "Conditions":
        return self._map(lambda v: v.to(device))

    def repeat(self, times: int) -> "Conditions":
        """Stack ``times`` copies along the batch: (B, ...) -> (times*B, ...), e.g. one copy per guidance branch."""
        return self._map(lambda v: v.repeat(times, *[1] * (v.ndim - 1)))


class FrozenParts:
    """The pre-trained, frozen parts of a world: autoencoder, image encoder, and (for prompts) tokenizer + text
    encoder. ``metadata`` keeps each part's JSON metadata so that re-saving does not lose its model card numbers."""

    def __init__(self, autoencoder: Autoencoder, image_encoder: ImageEncoder, text_encoder: TextEncoder | None = None,
                 tokenizer: WordTokenizer | None = None, metadata: dict[str, dict] | None = None,
                 folder: str | Path | None = None):
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("a text encoder needs its tokenizer and vice versa: pass both or neither.")
        if text_encoder is not None and tokenizer.vocab_size != text_encoder.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} words but the text encoder expects "
                             f"{text_encoder.config.vocab_size}; they must come from the same encoder training run.")
        self.autoencoder, self.image_encoder = autoencoder, image_encoder
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.metadata = metadata or {}
        self.folder = None if folder is None else Path(folder).resolve()

    @classmethod
    def load(cls, folder: str | Path) -> "FrozenParts":
        """Read the parts saved in ``folder`` by the autoencoder and encoder training commands."""
        folder = Path(folder)
        if not (folder / "autoencoder.json").is_file() or not (folder / "image_encoder.json").is_file():
            raise FileNotFoundError(
                f"{folder} does not hold the frozen parts (autoencoder.* and image_encoder.*). Train them with "
                "`python -m ctxdiff_from_scratch autoencoder --world W --out FOLDER` and "
                "`python -m ctxdiff_from_scratch encoders --world W --out FOLDER`, or point to a shipped folder such "
                "as data/checkpoints/shapes.")
        has_text = (folder / "text_encoder.json").is_file()
        names = ["autoencoder", "image_encoder"] + (["text_encoder"] if has_text else [])
        metadata = {name: json.loads((folder / f"{name}.json").read_text()).get("metadata", {}) for name in names}
        return cls(autoencoder=Autoencoder.from_pretrained(folder),
                   image_encoder=ImageEncoder.from_pretrained(folder),
                   text_encoder=TextEncoder.from_pretrained(folder) if has_text else None,
                   tokenizer=WordTokenizer.load(folder / TOKENIZER_FILE) if has_text else None,
                   metadata=metadata, folder=folder)

    @classmethod
    def untrained(cls, image_size: int = 32, prompts: list[str] | None = None, seed: int = 0) -> "FrozenParts":
        """Tiny *untrained* parts (``tiny`` profiles) for tests and demos of the plumbing, never for results.

        ``prompts``: texts to fit the tokenizer on; None gives a world without prompts (no text encoder).
        """
        torch.manual_seed(seed)
        autoencoder = Autoencoder(AutoencoderConfig.profile("tiny", image_size=image_size)).eval()
        image_encoder = ImageEncoder(ImageEncoderConfig.profile("tiny")).eval().requires_grad_(False)
        text_encoder = tokenizer = None
        if prompts is not None:
            tokenizer = WordTokenizer.fit(prompts)
            text_encoder = TextEncoder(TextEncoderConfig.profile(
                "tiny", vocab_size=tokenizer.vocab_size, max_length=tokenizer.max_length)).eval().requires_grad_(False)
        return cls(autoencoder, image_encoder, text_encoder, tokenizer)


class Denoiser(nn.Module):
    """The trained part of the model: conditioner (Eq. 3 tokens), UNet, and the optional query adapter.

    ``forward`` returns the network output of Eq. 2, model(z_t, t, query, [h^c ; h^V]): (B, C, h, w).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.conditioner = ContextConditioner(config.context)
        self.unet = UNet(config.unet)
        self.adapter = QueryAdapter(config.unet, config.adapter) if config.adapter is not None else None
        context = config.context
        self.context_tokenizer = (LatentTokenizer(config.unet.latent_channels, context.latent_side,
                                                  context.visual_dim, patch_classes=context.patch_classes)
                                  if context.learns_tokens else None)

    def visual_tokens(self, cond: Conditions) -> torch.Tensor | None:
        """Per-image context tokens (B, k, N, D_v) for Eq. 3: the frozen encoder's, the trained tokenizer's over the
        context latents, or both (``ContextConfig.tokenizer``); None without context."""
        if self.context_tokenizer is None or cond.image_tokens is None:
            return cond.image_tokens
        if cond.context_latents is None:
            raise ValueError(f"this denoiser tokenizes the context itself (ContextConfig.tokenizer="
                             f"{self.config.context.tokenizer!r}) but the conditions carry no context_latents; build "
                             "them with model.encode_conditions(query, context, ...).")
        mask = cond.context_mask if cond.context_mask is not None else \
            torch.ones(cond.context_latents.shape[:2], dtype=torch.bool, device=cond.context_latents.device)
        learned = self.context_tokenizer(cond.context_latents, mask)  # (B, k, h*w, D_v)
        if self.config.context.reads_frozen_tokens:  # "frozen+latents": (B, k, N_v + h*w, D_v)
            return torch.cat([cond.image_tokens, learned], dim=2)
        return learned

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions, drop_prompt: torch.Tensor | None = None,
                drop_context: torch.Tensor | None = None, conditioning_scale: float | None = None) -> torch.Tensor:
        """x_t (B, C, h, w), t (B,); drop_* (B,) bool remove a sample's prompt / context (classifier-free guidance)."""
        tokens, token_mask = self.conditioner(cond.text_tokens, cond.text_mask, self.visual_tokens(cond),
                                              cond.context_mask,
                                              drop_prompt=drop_prompt, drop_context=drop_context,
                                              batch_size=x_t.shape[0])  # -> (B, 1 + N_c + N, D_c), (B, 1 + N_c + N)
        if self.adapter is None:
            return self.unet(x_t, t, tokens, token_mask)
        down, mid = self.adapter(x_t, t, cond.query, tokens, token_mask, conditioning_scale=conditioning_scale)
        return self.unet(x_t, t, tokens, token_mask, down_residuals=down, mid_residual=mid)


class ContextDiffusionModel(nn.Module):
    """Frozen autoencoder + encoders, trained ``Denoiser``, and the noise schedule: everything a sampler needs.

    >>> model = ContextDiffusionModel.from_pretrained("data/checkpoints/shapes")
    >>> cond = model.encode_conditions(query, context, prompts=["a red circle ..."])
    >>> out = model.predict(z_t, t, cond)            # eps or v, per model.schedule.prediction_type
    """

    reads_pairs = False  # True for a model whose context is example (source, target) pairs (the PD-style baseline)

    def __init__(self, config: ModelConfig, parts: FrozenParts):
        super().__init__()
        _check_parts_fit(config, parts)
        self.config = config
        self.autoencoder = parts.autoencoder.requires_grad_(False)
        self.image_encoder = parts.image_encoder.requires_grad_(False)
        self.text_encoder = None if parts.text_encoder is None else parts.text_encoder.requires_grad_(False)
        self.tokenizer = parts.tokenizer
        self.parts_metadata, self.parts_folder = parts.metadata, parts.folder
        self.denoiser = Denoiser(config)
        self.schedule = NoiseSchedule(config.schedule)
        self.train(False)

    # The trained sub-modules, by the names the paper (and the contract) uses.
    @property
    def conditioner(self) -> ContextConditioner:
        return self.denoiser.conditioner

    @property
    def unet(self) -> UNet:
        return self.denoiser.unet

    @property
    def adapter(self) -> QueryAdapter | None:
        return self.denoiser.adapter

    @property
    def frozen_parts(self) -> FrozenParts:
        return FrozenParts(self.autoencoder, self.image_encoder, self.text_encoder, self.tokenizer,
                           self.parts_metadata, self.parts_folder)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        return self.autoencoder.config.latent_shape

    def train(self, mode: bool = True) -> "ContextDiffusionModel":
        """Only the denoiser ever trains: the frozen parts stay in eval mode."""
        super().train(mode)
        for part in (self.autoencoder, self.image_encoder, self.text_encoder):
            if part is not None:
                part.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> scaled latents z_0 (B, C, h, w) (the posterior mean)."""
        return self.autoencoder.encode(images)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
        return self.autoencoder.decode(latents)

    @torch.no_grad()
    def encode_context(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor | None:
        """Context images (B, k, 3, H, W) -> per-image visual tokens (B, k, N_v, D_v); None without any real one.

        Images are resized to the image encoder's resolution when it differs from theirs.
        """
        size = self.image_encoder.config.image_size

        def encode(images: torch.Tensor) -> torch.Tensor:  # (n, 3, H, W) -> (n, N_v, D_v)
            if images.shape[-1] != size or images.shape[-2] != size:
                images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False).clamp(0, 1)
            return self.image_encoder(images).tokens

        return encode_context_images(encode, context, context_mask)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str],
                       device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Prompts -> (h^c (B, N_c, D_c), mask (B, N_c) bool); "" is no prompt (all False). None if no text encoder
        or every prompt is empty."""
        if self.text_encoder is None or not any(prompts):
            return None
        batch = self.tokenizer(prompts)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        tokens = self.text_encoder(ids, mask).tokens
        present = torch.tensor([bool(p) for p in prompts], device=device)
        return tokens, mask & present[:, None]  # (B, N_c) & (B, 1): an empty prompt is masked like a dropped one

    @torch.no_grad()
    def encode_conditions(self, query: torch.Tensor, context: torch.Tensor | None = None,
                          context_mask: torch.Tensor | None = None, prompts: list[str] | None = None,
                          context_sources: torch.Tensor | None = None) -> Conditions:
        """Run the frozen encoders once for a batch.

        query (B, 3, H, W) in [0, 1] with H = W = ``config.image_size``; context (B, k, 3, H, W) or None (k = 0);
        context_mask (B, k) bool, default all True; prompts: B strings or None ("" = no prompt). context_sources
        (each context image's source view) is for models that read example pairs (``reads_pairs``); Context
        Diffusion's context is the target-domain images alone, so it must be None here.
        """
        if context_sources is not None and not self.reads_pairs:
            raise ValueError("context_sources are example-pair inputs of the Prompt-Diffusion-style baseline; Context "
                             "Diffusion reads the context images alone: leave them out.")
        size = self.config.image_size
        if query.ndim != 4 or tuple(query.shape[1:]) != (3, size, size):
            raise ValueError(f"query must be (B, 3, {size}, {size}) in [0, 1], got {tuple(query.shape)}; resize it "
                             f"to the model's image size ({size}) and add a batch dimension for a single image.")
        batch = query.shape[0]
        image_tokens = None
        if context is not None and context.shape[1] > 0:
            if context.ndim != 5 or context.shape[0] != batch or context.shape[2] != 3:
                raise ValueError(f"context must be (B={batch}, k, 3, H, W), got {tuple(context.shape)}; stack the k "
                                 "context images of each sample along dim 1.")
            if context_mask is None:
                context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
            image_tokens = self.encode_context(context, context_mask)
        context_mask = None if image_tokens is None else context_mask
        context_latents = None
        if image_tokens is not None and self.config.context.learns_tokens:
            context_latents = encode_context_images(self.encode_images, context, context_mask)  # (B, k, C, h, w)
        text = None
        if prompts is not None:
            if isinstance(prompts, str) or len(prompts) != batch:
                raise ValueError(f"prompts must be a list of B={batch} strings (\"\" for no prompt), got {prompts!r}.")
            text = self.encode_prompts(list(prompts), query.device)
        text_tokens, text_mask = (None, None) if text is None else text
        return Conditions(text_tokens, text_mask, image_tokens, context_mask, query, context_latents)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor | int, cond: Conditions,
                drop_prompt: torch.Tensor | bool | None = None, drop_context: torch.Tensor | bool | None = None,
                conditioning_scale: float | None = None) -> torch.Tensor:
        """The network output (eps or v) for x_t (B, C, h, w) at timesteps t (int or (B,)).

        drop_prompt / drop_context: a bool for the whole batch or a (B,) bool tensor, True removes that condition.
        conditioning_scale scales the query adapter's residuals (None: the config's value; 0: query off).
        """
        batch = x_t.shape[0]
        if cond.batch_size != batch:
            raise ValueError(f"x_t holds {batch} samples but the conditions {cond.batch_size}; use "
                             "cond.repeat(n) to match a batch of n copies.")
        t = torch.as_tensor(t, device=x_t.device).long().expand(batch)
        return self.denoiser(x_t, t, cond, _flag(drop_prompt, batch, x_t.device),
                             _flag(drop_context, batch, x_t.device), conditioning_scale)

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None,
                        metadata: dict | None = None) -> Path:
        """Write the whole model into ``folder``: the frozen parts (unless ``folder`` is where they were loaded
        from) and ``denoiser.{safetensors,json}``. ``dtype=torch.float16`` halves the file sizes for shipping."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if folder.resolve() != self.parts_folder:
            save_frozen_parts(self.frozen_parts, folder, dtype)
        save_part(folder, DENOISER_NAME, self.denoiser, self.config.to_dict(), metadata=metadata, dtype=dtype)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str | None = None) -> "ContextDiffusionModel":
        """Load a folder written by ``save_pretrained`` (e.g. ``data/checkpoints/shapes``), in eval mode."""
        folder = Path(folder)
        if not (folder / f"{DENOISER_NAME}.json").is_file():
            raise FileNotFoundError(f"{folder} has no {DENOISER_NAME}.json: it is not a trained model folder. Train "
                                    "one with `python -m ctxdiff_from_scratch train --world W --out FOLDER`.")
        state, config_dict, metadata = load_part(folder, DENOISER_NAME)
        config, model_class = ModelConfig.from_dict(config_dict), cls
        if config.baseline == "prompt-diffusion" and not cls.reads_pairs:
            from .baselines.prompt_diffusion import PairDiffusionModel as model_class  # the saved model's own class
        model = model_class(config, FrozenParts.load(folder))
        model.denoiser.load_state_dict(state)
        model.metadata = metadata
        return model.to(device or "cpu").eval()


def save_frozen_parts(parts: FrozenParts, folder: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write the frozen parts with their original metadata (the model cards' numbers travel with them)."""
    folder = Path(folder)
    meta = parts.metadata
    save_part(folder, "autoencoder", parts.autoencoder, parts.autoencoder.config, meta.get("autoencoder"), dtype)
    parts.image_encoder.save_pretrained(folder, metadata=meta.get("image_encoder"), dtype=dtype)
    if parts.text_encoder is not None:
        parts.text_encoder.save_pretrained(folder, metadata=meta.get("text_encoder"), dtype=dtype)
        parts.tokenizer.save(folder / TOKENIZER_FILE)


def _check_parts_fit(config: ModelConfig, parts: FrozenParts) -> None:
    ae = parts.autoencoder.config
    problems = []
    if config.unet.latent_channels != ae.latent_channels:
        problems.append(f"UNetConfig.latent_channels={config.unet.latent_channels} but the autoencoder's latents "
                        f"have {ae.latent_channels} channels")
    if config.image_size != ae.image_size:
        problems.append(f"ModelConfig.image_size={config.image_size} but the autoencoder works at {ae.image_size}")
    if config.context.visual_dim != parts.image_encoder.config.dim:
        problems.append(f"ContextConfig.visual_dim={config.context.visual_dim} but the image encoder's tokens are "
                        f"{parts.image_encoder.config.dim} wide")
    if parts.text_encoder is not None and config.context.context_dim != parts.text_encoder.config.dim:
        problems.append(f"ContextConfig.context_dim={config.context.context_dim} but the text encoder's tokens are "
                        f"{parts.text_encoder.config.dim} wide")
    if config.adapter is not None and config.adapter.downsample_factor != ae.downsample_factor:
        problems.append(f"AdapterConfig.downsample_factor={config.adapter.downsample_factor} but the autoencoder "
                        f"downsamples by {ae.downsample_factor}")
    if problems:
        raise ValueError("the denoiser config does not fit the frozen parts: " + "; ".join(problems) +
                         ". Build the config with ModelConfig.from_parts(autoencoder, image_encoder, text_encoder).")


def _flag(value: torch.Tensor | bool | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """None, a bool for the whole batch, or a (B,) bool tensor -> None or (B,) bool tensor."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    return torch.full((batch,), bool(value), dtype=torch.bool, device=device)

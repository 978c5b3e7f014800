"""``ContextDiffusion``: the paper's model on pre-trained parts (CLIP, Stable Diffusion, ControlNet).

The same design as the from-scratch model of notebooks 02-08, with full-size parts in place of the toy ones:

    h^c = CLIP_text(tokens(prompt))                        (B, 77, D)      frozen  CLIPModel.text_model
    H_i = CLIP_vision(v_i), i = 1..k                       (B, k, N_v, D_v) frozen  CLIPModel.vision_model
    h^V = W_p combine_k(H_1, ..., H_k) + b_p               (B, N, D)       trained  ``visual_projection``
    eps = UNet(z_t, t, [h^c ; h^V] | ControlNet(z_t, t, [h^c ; h^V], query))

The UNet's cross-attention reads [h^c ; h^V] as keys and values (paper Eq. 3); the query map enters through a
ControlNet whose zero convolutions add its residuals to the UNet's skips (the paper's ControlNet branch, ControlNet
Eq. 2), and the ControlNet reads the same [h^c ; h^V]. ``combine`` merges the k context images' hidden states by
``sum`` (the paper), ``mean`` or ``concat`` (IP-Adapter's way with several images): N = N_v, or k N_v for concat.

An absent or dropped condition has a fixed stand-in of the same shape, so every embedding of a batch stacks:

* no prompt: h^c of the empty prompt "" (Stable Diffusion's own unconditional embedding);
* no context: zero hidden states before the projection, so h^V = W_p 0 + b_p = b_p (IP-Adapter's rule for a
  dropped image). A sample with k = 0 and one whose context is dropped are the same.

[h^c ; h^V] has 77 + N positions, more than CLIP's 77. The UNet's ``encoder_hidden_states`` has no length limit, but
diffusers' pipelines then need ``negative_prompt_embeds`` of the same shape, which :meth:`prompt_embeds` returns (left
out, the pipeline would encode "" to 77 positions and fail on the shape mismatch).

Sampling: :meth:`generate` runs DDIM with the dual classifier-free guidance of ``guidance.py`` (scales s_c, s_p);
:meth:`diffusers_pipeline` plus :meth:`prompt_embeds` run diffusers' own ``StableDiffusionControlNetPipeline`` with a
single guidance scale s, which equals s_c = s_p = s. Training: ``forward`` is paper Eq. 2's loss (``train.py``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import config_from_dict, load_part, save_part
from ..config import COMBINE_MODES
from ..context import combine_context_tokens, encode_context_images
from ..guidance import guidance_weights
from ..pipeline import DEFAULT_GUIDANCE, check_guidance, prepare_prompts, prepare_query
from .preprocessing import context_pixels

CONFIG_NAME = "context_diffusion.json"
PROJECTION_NAME = "visual_projection"
CONTROLNET_DIR = "controlnet"
DECODER_NAME = "unet_decoder"
DECODER_PARTS = ("up_blocks", "conv_norm_out", "conv_out")  # the UNet's decoder half: trainable with train_decoder
# ControlNetModel.from_unet's hint encoder (16, 32, 96, 256) halves 3 times, for Stable Diffusion's 8x VAE; a VAE
# with fewer levels takes its first log2(factor) + 1 widths
HINT_CHANNELS = (16, 32, 96, 256)


@dataclass
class ContextDiffusionConfig:
    """Where the parts come from and how they are combined; ``context_diffusion.json`` of a saved model.

    clip:             CLIP id or folder: tokenizer, text tower (h^c) and vision tower (h^V), e.g.
                      "openai/clip-vit-large-patch14" (the paper's ViT-L/14, whose text tower is SD 1.x's)
    stable_diffusion: Stable Diffusion id or folder with unet/, vae/ and scheduler/ subfolders, e.g.
                      "stable-diffusion-v1-5/stable-diffusion-v1-5"
    controlnet:       ControlNet id or folder to start from, e.g. "lllyasviel/sd-controlnet-canny"; None: a copy of
                      the UNet's encoder (``ControlNetModel.from_unet``), as the paper's ControlNet branch starts
    combine:          "sum" (paper), "mean" or "concat" over the k context images
    resolution:       image side in pixels for generation and training; None: the UNet's sample_size x the VAE factor
    train_decoder:    also train the UNet's decoder half ("only the encoder is frozen", as the paper does)
    """

    clip: str
    stable_diffusion: str
    controlnet: str | None = None
    combine: str = "sum"
    resolution: int | None = None
    train_decoder: bool = False

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine={self.combine!r} is not one of {COMBINE_MODES}.")


@dataclass
class Conditions:
    """The two halves of [h^c ; h^V] and their stand-ins for an absent condition (module docstring), for B samples.

    text: (B, 77, D) h^c of the prompts; null_text: (B, 77, D) h^c of ""
    visual: (B, N, D) h^V of the context; null_visual: (B, N, D) b_p, the projection of zero hidden states
    has_prompt / has_context: whether the call gave a prompt / at least one context image
    """

    text: torch.Tensor
    null_text: torch.Tensor
    visual: torch.Tensor
    null_visual: torch.Tensor
    has_prompt: bool
    has_context: bool

    def embeddings(self, context: bool, prompt: bool) -> torch.Tensor:
        """[h^c ; h^V] with the context and/or the prompt replaced by their stand-ins: (B, 77 + N, D)."""
        text = self.text if prompt else self.null_text
        visual = self.visual if context else self.null_visual
        return torch.cat([text, visual], dim=1)  # (B, 77, D) + (B, N, D) -> (B, 77 + N, D)


@dataclass
class TrainingBatch:
    """One batch for paper Eq. 2; every random draw is made by the caller (``train.draw_batch``).

    target: (B, 3, H, W) images in [0, 1]; query: (B, 3, H, W) query maps in [0, 1] (Canny edges)
    context: (B, k, 3, S, S) CLIP-normalised context images; context_mask: (B, k) bool
    prompts: B strings ("" for none); drop_prompt, drop_context: (B,) bool, for classifier-free guidance
    t: (B,) long timesteps; noise: (B, C, h, w) eps; latent_noise: (B, C, h, w) the VAE posterior's sample noise
    """

    target: torch.Tensor
    query: torch.Tensor
    context: torch.Tensor
    context_mask: torch.Tensor
    prompts: list[str]
    drop_prompt: torch.Tensor
    drop_context: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    latent_noise: torch.Tensor

    def _map(self, fn) -> "TrainingBatch":
        return TrainingBatch(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> "TrainingBatch":
        return self._map(lambda value: value.to(device) if isinstance(value, torch.Tensor) else value)

    def slice(self, part: slice) -> "TrainingBatch":
        """The examples ``part`` of the batch (one process's or one micro-step's share)."""
        return self._map(lambda value: value[part])


def hint_channels(vae_factor: int) -> tuple[int, ...]:
    """The ControlNet hint encoder's widths that downsample a query by ``vae_factor`` (1, 2, 4 or 8)."""
    halvings = vae_factor.bit_length() - 1  # log2(factor)
    if 2 ** halvings != vae_factor or halvings >= len(HINT_CHANNELS):
        raise ValueError(f"a VAE that downsamples by {vae_factor} needs a ControlNet hint encoder this module cannot "
                         f"build (it supports factors 1, 2, 4 and 8); pass a matching ControlNet id or folder.")
    return HINT_CHANNELS[: halvings + 1]


class ContextDiffusion(nn.Module):
    """Context Diffusion on a CLIP model, a Stable Diffusion UNet + VAE + scheduler and a ControlNet.

    >>> model = ContextDiffusion.from_pretrained_parts("openai/clip-vit-large-patch14",
    ...                                                "stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> images = model.generate(query=edges, context=[path_1, path_2], prompt="a watercolour")  # (B, 3, H, W)
    >>> loss = model(batch)          # paper Eq. 2 on a TrainingBatch; gradients reach the trainable parts only

    Frozen: CLIP (both towers), the VAE, the UNet (its decoder half is trainable when ``config.train_decoder``).
    Trained: ``visual_projection`` (W_p, b_p) and the ControlNet.
    """

    def __init__(self, config: ContextDiffusionConfig, tokenizer, clip: nn.Module, vae: nn.Module, unet: nn.Module,
                 controlnet: nn.Module, scheduler):
        super().__init__()
        from diffusers import DDPMScheduler

        self.config, self.tokenizer, self.scheduler = config, tokenizer, scheduler
        self.clip, self.vae, self.unet, self.controlnet = clip, vae, unet, controlnet
        text_width, vision_width = clip.config.text_config.hidden_size, clip.config.vision_config.hidden_size
        if text_width != unet.config.cross_attention_dim:
            raise ValueError(f"the CLIP text tower is {text_width} wide but the UNet's cross-attention expects "
                             f"{unet.config.cross_attention_dim}: [h^c ; h^V] must have the UNet's width. Pair the "
                             "UNet with the CLIP it was trained on (SD 1.x: openai/clip-vit-large-patch14, 768).")
        if unet.config.addition_embed_type is not None:
            raise ValueError(f"this UNet also needs {unet.config.addition_embed_type!r} embeddings (an SDXL-style "
                             "UNet); this track supports Stable Diffusion 1.x and 2.x UNets.")
        if tokenizer.model_max_length > 10_000:
            raise ValueError("the tokenizer has no maximum length, so prompts cannot be padded to CLIP's 77 "
                             "positions; load it with CLIPTokenizer.from_pretrained(folder, model_max_length=77).")
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = config.resolution or unet.config.sample_size * self.vae_factor
        multiple = self.vae_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        if self.resolution % multiple:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {multiple} (the VAE's factor "
                             f"{self.vae_factor} times the UNet's {len(unet.config.block_out_channels) - 1} "
                             "halvings); e.g. 256 or 512 for Stable Diffusion.")
        self.vision_size = clip.config.vision_config.image_size
        patches = (self.vision_size // clip.config.vision_config.patch_size) ** 2
        self.visual_tokens = patches + 1  # N_v: one hidden state per patch, and the class token
        # W_p, b_p: D_v -> D, in the dtype of the other trained part
        self.visual_projection = nn.Linear(vision_width, text_width, dtype=controlnet.dtype)
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)  # q(z_t | z_0) for training
        self.clip.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(False)
        if config.train_decoder:
            for part in self.decoder_parts().values():
                part.requires_grad_(True)
        self.clip.eval()
        self.vae.eval()

    # -- loading and saving ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained_parts(cls, clip: str, stable_diffusion: str, controlnet: str | None = None,
                              combine: str = "sum", resolution: int | None = None, train_decoder: bool = False,
                              torch_dtype: torch.dtype | None = None,
                              trainable_dtype: torch.dtype | None = None) -> "ContextDiffusion":
        """Load the parts by Hub id or local folder (see :class:`ContextDiffusionConfig`); the projection is new.

        torch_dtype:     the parts' dtype, e.g. torch.float16 on a GPU (None: the libraries' default, float32 here)
        trainable_dtype: that of the trained parts (ControlNet, projection, the UNet if its decoder trains), e.g.
                         float32 under mixed precision (None: torch_dtype)
        """
        controlnet = None if controlnet is None else str(controlnet)
        config = ContextDiffusionConfig(str(clip), str(stable_diffusion), controlnet, combine, resolution,
                                        train_decoder)
        return cls.from_config(config, torch_dtype, trainable_dtype)

    @classmethod
    def from_config(cls, config: ContextDiffusionConfig, torch_dtype: torch.dtype | None = None,
                    trainable_dtype: torch.dtype | None = None,
                    controlnet_weights: str | Path | None = None) -> "ContextDiffusion":
        """Load every part that ``config`` names; ``controlnet_weights`` (a folder) replaces ``config.controlnet``.
        Each part is loaded in its dtype (diffusers warns on a later ``.to(dtype)``)."""
        from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPModel, CLIPTokenizer

        trainable_dtype = trainable_dtype or torch_dtype
        tokenizer = CLIPTokenizer.from_pretrained(config.clip)
        clip = CLIPModel.from_pretrained(config.clip, dtype=torch_dtype)
        sd = config.stable_diffusion
        unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", torch_dtype=trainable_dtype
                                                    if config.train_decoder else torch_dtype)
        vae = AutoencoderKL.from_pretrained(sd, subfolder="vae", torch_dtype=torch_dtype)
        scheduler = DDIMScheduler.from_pretrained(sd, subfolder="scheduler")  # DDIM, as the paper samples
        source = controlnet_weights or config.controlnet
        if source is None:
            vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint_channels(vae_factor))
            if trainable_dtype is not None and controlnet.dtype != trainable_dtype:  # from_unet builds float32
                controlnet = controlnet.to(trainable_dtype)
        else:
            controlnet = ControlNetModel.from_pretrained(source, torch_dtype=trainable_dtype)
        return cls(config, tokenizer, clip, vae, unet, controlnet, scheduler)

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        trainable_dtype: torch.dtype | None = None) -> "ContextDiffusion":
        """A model written by :meth:`save_pretrained` (or a ``sd-train`` checkpoint): its config names the frozen
        parts, which are loaded from their ids; the trained parts are loaded from ``folder``. Dtypes as in
        :meth:`from_pretrained_parts`."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: pass a folder written by "
                                    "ContextDiffusion.save_pretrained or a checkpoint folder of `sd-train`.")
        config = config_from_dict(ContextDiffusionConfig, json.loads(path.read_text()))
        model = cls.from_config(config, torch_dtype, trainable_dtype, controlnet_weights=folder / CONTROLNET_DIR)
        state, _, _ = load_part(folder, PROJECTION_NAME)
        model.visual_projection.load_state_dict(state)
        if config.train_decoder:
            state, _, _ = load_part(folder, DECODER_NAME)
            if set(state) != set(model.decoder_state()):
                raise ValueError(f"{folder}/{DECODER_NAME}.safetensors does not fit the decoder of the UNet in "
                                 f"{config.stable_diffusion}; was it trained on another Stable Diffusion?")
            model.unet.load_state_dict(state, strict=False)  # the decoder's keys only: the encoder stays as loaded
        return model

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the trained parts and the config: ``context_diffusion.json``, ``visual_projection.{safetensors,json}``,
        ``controlnet/`` (diffusers' format) and, with ``train_decoder``, ``unet_decoder.{safetensors,json}``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = dataclasses.asdict(self.config)
        save_part(folder, PROJECTION_NAME, self.visual_projection, config)
        self.controlnet.save_pretrained(folder / CONTROLNET_DIR)
        if self.config.train_decoder:
            save_part(folder, DECODER_NAME, nn.ModuleDict(self.decoder_parts()), config)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return folder

    # -- parts -------------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def decoder_parts(self) -> dict[str, nn.Module]:
        """The UNet's decoder half (up path and output layers), by attribute name."""
        return {name: getattr(self.unet, name) for name in DECODER_PARTS if getattr(self.unet, name) is not None}

    def decoder_state(self) -> dict[str, torch.Tensor]:
        return nn.ModuleDict(self.decoder_parts()).state_dict()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        """Recompute UNet and ControlNet activations in the backward pass: less memory, about 30% more time."""
        self.unet.enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()

    # -- conditions --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """h^c: B prompts -> (B, 77, D), CLIP's last hidden states, padded/truncated to 77 tokens as SD does."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids  # (B, 77)
        return self.clip.text_model(input_ids=ids.to(self.device)).last_hidden_state.to(self.dtype)

    @torch.no_grad()
    def vision_hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images (n, 3, S, S) -> the vision tower's last hidden states (n, N_v, D_v)."""
        return self.clip.vision_model(pixel_values=pixels.to(self.device, self.clip.dtype)).last_hidden_state

    def encode_context(self, pixels: torch.Tensor | None, context_mask: torch.Tensor | None = None,
                       batch: int | None = None) -> torch.Tensor:
        """h^V = W_p combine_k(CLIP_vision(v_1..v_k)) + b_p: (B, k, 3, S, S) -> (B, N, D).

        context_mask: (B, k) bool, False for padded or dropped slots (their hidden states are zeros: module
        docstring). pixels None or k = 0: no context, h^V = b_p for ``batch`` samples.
        """
        if pixels is None or pixels.shape[1] == 0:
            batch = batch if pixels is None else pixels.shape[0]
            if batch is None:
                raise ValueError("encode_context without context images needs batch=B.")
            pixels = torch.zeros(batch, 1, 3, self.vision_size, self.vision_size)  # one empty slot
            context_mask = torch.zeros(batch, 1, dtype=torch.bool)
        if context_mask is None:
            context_mask = torch.ones(pixels.shape[:2], dtype=torch.bool)
        context_mask = context_mask.to(self.device)
        hidden = encode_context_images(self.vision_hidden_states, pixels.to(self.device), context_mask)
        if hidden is None:  # every slot empty: zero hidden states, (B, k, N_v, D_v)
            hidden = torch.zeros(*pixels.shape[:2], self.visual_tokens, self.visual_projection.in_features,
                                 device=self.device, dtype=self.clip.dtype)
        combined, _ = combine_context_tokens(hidden, context_mask, self.config.combine)  # -> (B, N, D_v)
        return self.visual_projection(combined.to(self.visual_projection.weight.dtype))  # (B, N, D_v) -> (B, N, D)

    def conditions(self, context=None, prompt=None, batch: int = 1) -> Conditions:
        """Encode a call's context (paths, PIL images or tensors in [0, 1]; see ``pipeline.py``) and prompt."""
        prompts = prepare_prompts(prompt, batch)  # None, or B strings
        pixels, mask = context_pixels(context, batch, self.vision_size)  # (B, k, 3, S, S), (B, k)
        has_context = bool(mask.any())
        if prompts is None and not has_context:
            raise ValueError("give context images, a prompt, or both: Context Diffusion generates from a query "
                             "plus at least one of them (the paper's C, P and C+P settings).")
        with torch.no_grad():
            null_text = self.encode_prompt([""]).expand(batch, -1, -1)  # (1, 77, D) -> (B, 77, D)
            text = null_text if prompts is None else self.encode_prompt(prompts)
            visual = self.encode_context(pixels, mask, batch)
            null_visual = self.encode_context(pixels, torch.zeros_like(mask), batch)
        return Conditions(text, null_text, visual, null_visual, prompts is not None, has_context)

    def prompt_embeds(self, context=None, prompt=None, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """For diffusers' pipelines: ``prompt_embeds`` = [h^c ; h^V] and ``negative_prompt_embeds`` = both
        conditions' stand-ins, each (B, 77 + N, D): guidance scale s gives eps(0,0) + s (eps(c,p) - eps(0,0))."""
        cond = self.conditions(context, prompt, batch)
        return cond.embeddings(True, True), cond.embeddings(False, False)

    # -- the denoiser ------------------------------------------------------------------------------------------------
    def predict(self, z_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, query: torch.Tensor,
                conditioning_scale: float = 1.0) -> torch.Tensor:
        """The UNet's output (noise or velocity, per the scheduler) for latents (B, C, h, w), query (B, 3, H, W)."""
        down, mid = self.controlnet(z_t, t, encoder_hidden_states=embeddings, controlnet_cond=query.to(z_t.dtype),
                                    conditioning_scale=conditioning_scale, return_dict=False)
        # ControlNet Eq. 2: the zero-conv residuals are added to the UNet's skips and middle block
        return self.unet(z_t, t, encoder_hidden_states=embeddings, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]

    def forward(self, batch: TrainingBatch) -> torch.Tensor:
        """Paper Eq. 2: || target(z_0, eps, t) - model(z_t, t, query, [h^c ; h^V]) ||^2, averaged over the batch."""
        with torch.no_grad():
            posterior = self.vae.encode(batch.target.to(self.device, self.vae.dtype) * 2 - 1).latent_dist
            # z_0 ~ N(mu, sigma^2), drawn with the batch's noise, scaled to unit variance as SD's UNet expects
            z0 = posterior.mean + posterior.std * batch.latent_noise.to(posterior.mean)
            z0 = z0 * self.vae.config.scaling_factor
        noise, t = batch.noise.to(z0), batch.t.to(self.device)
        z_t = self.noise_scheduler.add_noise(z0, noise, t)  # z_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(z0, noise, t)  # v = sqrt(ab_t) eps - sqrt(1 - ab_t) z_0
        else:
            target = noise
        prompts = ["" if drop else p for p, drop in zip(batch.prompts, batch.drop_prompt.tolist())]
        text = self.encode_prompt(prompts)  # a dropped prompt is the empty prompt
        keep = batch.context_mask.to(self.device) & ~batch.drop_context.to(self.device)[:, None]  # (B, k) & (B, 1)
        visual = self.encode_context(batch.context, keep)
        embeddings = torch.cat([text, visual], dim=1)  # [h^c ; h^V]: (B, 77 + N, D)
        prediction = self.predict(z_t, t, embeddings, batch.query.to(self.device))
        return F.mse_loss(prediction.float(), target.float())

    # -- sampling ----------------------------------------------------------------------------------------------------
    def initial_latents(self, batch: int, seed: int) -> torch.Tensor:
        """x_T ~ N(0, I) of shape (B, C, h, w), drawn on the CPU from ``seed`` (the same on every device)."""
        side = self.resolution // self.vae_factor
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(batch, self.unet.config.in_channels, side, side, generator=generator)
        return noise.to(self.device, self.dtype) * self.scheduler.init_noise_sigma

    def resolve_guidance(self, cond: Conditions, guidance_scale_context: float | None,
                         guidance_scale_prompt: float | None) -> tuple[float, float]:
        """(s_c, s_p): None is DEFAULT_GUIDANCE (3, the paper's); a scale for a condition the call lacks is an error."""
        scales = []
        for scale, name, present, what in ((guidance_scale_context, "guidance_scale_context", cond.has_context,
                                            "context images (k = 0)"),
                                           (guidance_scale_prompt, "guidance_scale_prompt", cond.has_prompt,
                                            "prompt")):
            if scale is not None and not present:
                raise ValueError(f"{name}={scale!r} was given but the call has no {what}, so there is nothing to "
                                 f"guide by; leave {name} at None, or pass the condition.")
            scales.append(DEFAULT_GUIDANCE if scale is None else check_guidance(scale, name))
        return scales[0], scales[1]

    @torch.no_grad()
    def generate(self, query, context=None, prompt=None, num_inference_steps: int = 50,
                 guidance_scale_context: float | None = None, guidance_scale_prompt: float | None = None,
                 controlnet_conditioning_scale: float = 1.0, seed: int = 0, progress: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for a query (a path, PIL image, (3, H, W) or (B, 3, H, W) tensor in [0, 1]),
        context images (None, a list of paths / PIL images / tensors, or a (k, 3, H, W) / (B, k, 3, H, W) tensor)
        and a prompt (None, a string or B strings). DDIM with dual classifier-free guidance (``guidance.py``):

            eps~ = eps(0, 0) + s_c (eps(c, 0) - eps(0, 0)) + s_p (eps(c, p) - eps(c, 0))

        with only the terms whose weight is non-zero evaluated, in one batched pass per step.
        """
        queries = prepare_query(query, self.resolution).to(self.device, self.dtype)  # (B, 3, H, W)
        batch = queries.shape[0]
        cond = self.conditions(context, prompt, batch)
        scale_context, scale_prompt = self.resolve_guidance(cond, guidance_scale_context, guidance_scale_prompt)
        weights = guidance_weights(scale_context, scale_prompt, cond.has_context, cond.has_prompt)
        n = len(weights)
        embeddings = torch.cat([cond.embeddings(c, p) for c, p in weights])  # n x (B, L, D) -> (n*B, L, D)
        control = queries.repeat(n, 1, 1, 1)  # (B, 3, H, W) -> (n*B, 3, H, W)
        latents = self.initial_latents(batch, seed)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in tqdm(self.scheduler.timesteps, desc="DDIM", disable=not progress):
            z = self.scheduler.scale_model_input(latents, t).repeat(n, 1, 1, 1)  # (B, C, h, w) -> (n*B, C, h, w)
            out = self.predict(z, t, embeddings, control, controlnet_conditioning_scale)
            out = out.view(n, batch, *out.shape[1:])  # (n*B, C, h, w) -> (n, B, C, h, w)
            # eps~ = sum_term w_term eps(term)
            guided = sum(weight * out[i] for i, weight in enumerate(weights.values()))
            latents = self.scheduler.step(guided, t, latents).prev_sample
        return self.decode(latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]."""
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample  # in [-1, 1]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def diffusers_pipeline(self, progress: bool = True):
        """diffusers' ``StableDiffusionControlNetPipeline`` on these parts, for single-guidance sampling::

            embeds, negative = model.prompt_embeds(context, prompt, batch=B)
            pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, image=query, guidance_scale=s, ...)

        No safety checker or feature extractor (both unused here).
        """
        from transformers.utils import logging

        # Importing diffusers' pipelines touches CLIPImageProcessor (for the safety checker's feature extractor),
        # which without torchvision warns that it falls back to CLIPImageProcessorPil; neither is used here.
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            from diffusers import StableDiffusionControlNetPipeline
        finally:
            logging.set_verbosity(verbosity)
        pipe = StableDiffusionControlNetPipeline(vae=self.vae, text_encoder=self.clip.text_model,
                                                 tokenizer=self.tokenizer, unet=self.unet, controlnet=self.controlnet,
                                                 scheduler=self.scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=not progress)
        return pipe

"""``ContextDiffusionPipeline``: from a query, k context images and an optional prompt to generated images.

Shaped like a diffusers pipeline::

    pipe = ContextDiffusionPipeline.from_pretrained("data/checkpoints/shapes")
    images = pipe(query=Q, context=C, prompt=None, num_inference_steps=25,
                  guidance_scale_context=3.0, guidance_scale_prompt=3.0, seed=0)   # (B, 3, H, W) in [0, 1]
    images = pipe(query=Q, context=C)   # the checkpoint's own guidance scales (sampling.json), seed 0

Guidance scales left as None take the checkpoint's defaults: ``sampling.json`` in its folder, written by
``python -m ctxdiff_from_scratch tune-guidance`` (chosen on unseen *train* episodes, never the test split), else
``DEFAULT_GUIDANCE`` (3) for both.

One call: check and batch the inputs, encode the conditions once (frozen encoders), draw x_T ~ N(0, I) from a CPU
generator seeded with ``seed``, denoise with DDIM or DDPM using dual classifier-free guidance (``guidance.py``) at every
step, and decode the final latent with the autoencoder.

Inputs a learner may pass (H = W = the model's image size, e.g. 64):

* ``query``: a tensor (3, H, W) or (B, 3, H, W), a PIL image, a file path, or a list of these (one per sample).
* ``context``: None (k = 0); a tensor (k, 3, H, W) shared by every sample or (B, k, 3, H, W); a list of images (each a
  (3, H, W) tensor, PIL image or path) shared by every sample; or a list of B such lists / (k_i, 3, H, W) tensors,
  one per sample, whose k_i may differ (shorter ones are padded and masked).
* ``prompt``: None or "" (no prompt), one string for every sample, or a list of B strings ("" where none).

Tensors must be float in [0, 1]. Tensors of another size are resized (centre-cropped to a square first), with a
warning; files and PIL images go through :func:`~ctxdiff_from_scratch.images.load_image_as_tensor`. Everything else
that is wrong -- a rank, a channel count, NaN or infinite values, values outside [0, 1], batch sizes that disagree, a
file that is missing or unreadable -- raises an error naming the argument before any network runs.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from PIL import Image

from .guidance import guided_model_fn
from .images import load_image_as_tensor
from .samplers import DDIMSampler, DDPMSampler, Sampler

SAMPLERS = ("ddim", "ddpm")
SAMPLING_FILE = "sampling.json"  # a checkpoint's default guidance scales (tune_guidance.py writes it)
GUIDANCE_FIELDS = ("guidance_scale_context", "guidance_scale_prompt")
DEFAULT_GUIDANCE = 3.0  # s_c and s_p of a checkpoint without sampling.json
RANGE_TOLERANCE = 1e-3  # values this far outside [0, 1] are float rounding and are clamped; further out is an error
_IMAGE_FILE_TYPES = (str, Path, Image.Image)


class PipelineOutput(NamedTuple):
    """What ``pipe(..., return_trajectory=True)`` returns.

    images:     (B, 3, H, W) in [0, 1], the final samples
    trajectory: (steps, B, 3, H, W) in [0, 1], the decoded x0 prediction at each visited timestep
    timesteps:  (steps,) the visited timesteps, descending
    """

    images: torch.Tensor
    trajectory: torch.Tensor
    timesteps: torch.Tensor


def _fit_size(image: torch.Tensor, size: int, name: str) -> torch.Tensor:
    """(..., 3, h, w) -> (..., 3, size, size): centre-crop to a square, then resize (bilinear, antialiased)."""
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image
    warnings.warn(f"{name} is {height}x{width} but this model works at {size}x{size}: resized"
                  f"{' (centre-cropped to a square first)' if height != width else ''}.", stacklevel=4)
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[..., top:top + side, left:left + side]
    lead = square.shape[:-3]
    flat = square.reshape(math.prod(lead), 3, side, side)  # (..., 3, s, s) -> (N, 3, s, s)
    resized = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.reshape(*lead, 3, size, size).clamp(0, 1)  # (N, 3, S, S) -> (..., 3, S, S)


def check_images(images: torch.Tensor, name: str, size: int) -> torch.Tensor:
    """Validate a float tensor (..., 3, h, w) of images in [0, 1] and resize it to ``size`` if needed."""
    if not images.is_floating_point():
        raise ValueError(f"{name} has dtype {images.dtype}; images must be float tensors in [0, 1] "
                         f"(for 0..255 integers use {name}.float() / 255).")
    if images.shape[-3] != 3:
        raise ValueError(f"{name} has {images.shape[-3]} channels (shape {tuple(images.shape)}); images must be RGB "
                         f"with 3 channels in front of H and W (a greyscale (1, H, W) image: "
                         f"{name}.expand(3, -1, -1)).")
    if images.numel() and not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values; check how it was computed.")
    if images.numel():
        low, high = images.min().item(), images.max().item()
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(f"{name} holds values in [{low:.3g}, {high:.3g}]; images must be in [0, 1]. For images "
                             "in [-1, 1] pass (x + 1) / 2; for 0..255 pass x / 255.")
    return _fit_size(images.float().clamp(0, 1), size, name)


def load_image(source, name: str, size: int) -> torch.Tensor:
    """One image from a tensor (3, H, W), a PIL image or a file path -> checked (3, size, size)."""
    if isinstance(source, _IMAGE_FILE_TYPES):
        try:
            return load_image_as_tensor(source, size)
        except (OSError, ValueError) as error:  # FileNotFoundError, IsADirectoryError, BadImageError
            raise type(error)(f"{name}: {error}") from error
    if not isinstance(source, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, a PIL image or a file path, got {type(source).__name__}.")
    if source.ndim != 3:
        raise ValueError(f"{name} must be one image of shape (3, H, W), got shape {tuple(source.shape)}.")
    return check_images(source, name, size)


def prepare_query(query, size: int) -> torch.Tensor:
    """``query`` in any accepted form (module docstring) -> (B, 3, size, size)."""
    if isinstance(query, (list, tuple)):
        if not query:
            raise ValueError("query is an empty list; pass at least one query image.")
        return torch.stack([load_image(q, f"query[{i}]", size) for i, q in enumerate(query)])  # B x (3,S,S)
    if isinstance(query, torch.Tensor) and query.ndim == 4:
        if query.shape[0] == 0:
            raise ValueError("query holds 0 images (shape (0, 3, H, W)); pass at least one.")
        return check_images(query, "query", size)
    if isinstance(query, torch.Tensor) and query.ndim != 3:
        raise ValueError(f"query must be (3, H, W) or (B, 3, H, W), got shape {tuple(query.shape)}.")
    return load_image(query, "query", size).unsqueeze(0)  # (3, S, S) -> (1, 3, S, S)


def _context_of_one_sample(context, name: str, size: int) -> torch.Tensor:
    """The context of one sample, a (k, 3, H, W) tensor or a list of k images -> (k, 3, size, size)."""
    if isinstance(context, torch.Tensor):
        if context.ndim != 4:
            hint = f" (one image: {name}.unsqueeze(0))" if context.ndim == 3 else ""
            raise ValueError(f"{name} must be (k, 3, H, W), got shape {tuple(context.shape)}{hint}.")
        return check_images(context, name, size)
    if not context:
        return torch.zeros(0, 3, size, size)
    return torch.stack([load_image(c, f"{name}[{i}]", size) for i, c in enumerate(context)])  # k x (3,S,S)


def prepare_context(context, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``context`` in any accepted form (module docstring) -> (context (B, k, 3, S, S), context_mask (B, k) bool).

    k = 0 (None, an empty list, a (0, 3, H, W) tensor) gives a (B, 0, 3, S, S) tensor: no context.
    """
    if context is None:
        context = []
    if isinstance(context, _IMAGE_FILE_TYPES):
        context = [context]
    if isinstance(context, torch.Tensor) and context.ndim == 5:
        if context.shape[0] != batch:
            raise ValueError(f"context holds {context.shape[0]} samples (shape {tuple(context.shape)}) but query "
                             f"holds {batch}; pass one context per query, or a (k, 3, H, W) context shared by all.")
        images = check_images(context, "context", size)
        return images, torch.ones(images.shape[:2], dtype=torch.bool)
    per_sample = isinstance(context, (list, tuple)) and len(context) > 0 and all(
        isinstance(c, (list, tuple)) or (isinstance(c, torch.Tensor) and c.ndim == 4) for c in context)
    if not per_sample:
        shared = _context_of_one_sample(context, "context", size)  # (k, 3, S, S)
        shared = shared.unsqueeze(0).expand(batch, *shared.shape).contiguous()  # (k, 3, S, S) -> (B, k, 3, S, S)
        return shared, torch.ones(batch, shared.shape[1], dtype=torch.bool)
    if len(context) != batch:
        raise ValueError(f"context is a list of {len(context)} per-sample contexts but query holds {batch} images; "
                         "give one context list per query image.")
    contexts = [_context_of_one_sample(c, f"context[{i}]", size) for i, c in enumerate(context)]
    images = pad_sequence(contexts, batch_first=True)  # B x (k_i, 3, S, S) -> (B, k_max, 3, S, S), zero-padded
    counts = torch.tensor([c.shape[0] for c in contexts])  # (B,)
    mask = torch.arange(images.shape[1])[None, :] < counts[:, None]  # (1, k_max) < (B, 1) -> (B, k_max)
    return images, mask


def prepare_prompts(prompt, batch: int) -> list[str] | None:
    """None / "" / a string / a list of B strings -> a list of B strings, or None when no sample has a prompt."""
    if prompt is None:
        return None
    if isinstance(prompt, str):
        prompts = [prompt] * batch
    elif isinstance(prompt, (list, tuple)):
        if len(prompt) != batch:
            raise ValueError(f"prompt is a list of {len(prompt)} strings but query holds {batch} images; give one "
                             "prompt per query image, or a single string for all.")
        bad = [type(p).__name__ for p in prompt if not isinstance(p, str) and p is not None]
        if bad:
            raise TypeError(f"every prompt in the list must be a string (or None), got {bad[0]}.")
        prompts = [p or "" for p in prompt]
    else:
        raise TypeError(f"prompt must be None, a string or a list of strings, got {type(prompt).__name__}.")
    return prompts if any(prompts) else None


def make_sampler(sampler: str | Sampler, schedule, eta: float = 0.0) -> Sampler:
    """"ddim" (with ``eta``) or "ddpm" -> a sampler on ``schedule``; a Sampler instance is used as it is."""
    if isinstance(sampler, Sampler):
        return sampler
    name = str(sampler).lower()
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} (or a Sampler instance), got {sampler!r}.")
    if name == "ddpm":
        if eta != 0.0:
            raise ValueError(f"eta={eta} only applies to DDIM (DDPM always adds its posterior noise); use "
                             "sampler='ddim' or leave eta at 0.")
        return DDPMSampler(schedule)
    return DDIMSampler(schedule, eta=eta)


def check_guidance(scale, name: str) -> float:
    """A guidance scale must be a finite number (1 = no guidance, 0 = ignore the condition)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number (1 = no guidance), got {scale!r}.")
    return float(scale)


def load_guidance_defaults(folder: str | Path) -> dict[str, float]:
    """The default guidance scales of the checkpoint in ``folder``: its ``sampling.json``, else DEFAULT_GUIDANCE."""
    path = Path(folder) / SAMPLING_FILE
    defaults = dict.fromkeys(GUIDANCE_FIELDS, DEFAULT_GUIDANCE)
    if not path.is_file():
        return defaults
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rewrite it with `python -m ctxdiff_from_scratch "
                         f"tune-guidance --checkpoint {folder}` or delete it to use s_c = s_p = 3.") from error
    if not isinstance(stored, dict):
        raise ValueError(f"{path} must hold a JSON object with {GUIDANCE_FIELDS}, got {type(stored).__name__}.")
    for name in GUIDANCE_FIELDS:
        if name in stored:
            defaults[name] = check_guidance(stored[name], f"{name} in {path}")
    return defaults


class ContextDiffusionPipeline:
    """Generate images from a query, visual context and an optional prompt with a trained ContextDiffusionModel.

    guidance_defaults: the s_c and s_p used when a call leaves them as None (``from_pretrained`` reads them from the
    checkpoint's sampling.json; DEFAULT_GUIDANCE for both when there is none).
    """

    def __init__(self, model, device: torch.device | str | None = None,
                 guidance_defaults: dict[str, float] | None = None):
        self.model = model.eval() if device is None else model.to(device).eval()
        self.guidance_defaults = dict.fromkeys(GUIDANCE_FIELDS, DEFAULT_GUIDANCE)
        for name, scale in (guidance_defaults or {}).items():
            if name not in GUIDANCE_FIELDS:
                raise ValueError(f"unknown guidance default {name!r}; choose from {GUIDANCE_FIELDS}.")
            self.guidance_defaults[name] = check_guidance(scale, name)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str | None = None
                        ) -> "ContextDiffusionPipeline":
        """Load the whole stack (autoencoder, encoders, tokenizer, UNet, adapter, config) from one folder."""
        from .model import ContextDiffusionModel

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no checkpoint folder at {folder} (working directory: {Path.cwd()}); shipped "
                                    "checkpoints live in data/checkpoints/shapes and data/checkpoints/glyphs.")
        return cls(ContextDiffusionModel.from_pretrained(folder), device=device,
                   guidance_defaults=load_guidance_defaults(folder))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        """The side of the square images the model generates and expects."""
        return self.model.config.image_size

    def prepare_inputs(self, query, context=None, prompt=None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str] | None]:
        """Check and batch the inputs (module docstring) -> query (B, 3, S, S), context (B, k, 3, S, S),
        context_mask (B, k), prompts (B strings or None); all on the CPU."""
        size = self.image_size
        query = prepare_query(query, size)
        context, context_mask = prepare_context(context, query.shape[0], size)
        prompts = prepare_prompts(prompt, query.shape[0])
        if prompts is not None and self.model.text_encoder is None:
            warnings.warn("this model has no text encoder (its world has no prompts): the prompt is ignored.",
                          stacklevel=3)
            prompts = None
        return query, context, context_mask, prompts

    def resolve_guidance(self, guidance_scale_context: float | None = None,
                         guidance_scale_prompt: float | None = None) -> tuple[float, float]:
        """(s_c, s_p) a call would use: the given scales, checked, with None replaced by the checkpoint's default."""
        scale_context, scale_prompt = (self.guidance_defaults[name] if scale is None else check_guidance(scale, name)
                                       for name, scale in zip(GUIDANCE_FIELDS,
                                                              (guidance_scale_context, guidance_scale_prompt)))
        return scale_context, scale_prompt

    @torch.no_grad()
    def __call__(self, query, context=None, prompt=None, num_inference_steps: int = 25,
                 guidance_scale_context: float | None = None, guidance_scale_prompt: float | None = None,
                 seed: int | None = 0, sampler: str | Sampler = "ddim", eta: float = 0.0, progress: bool = True,
                 return_trajectory: bool = False, context_sources=None) -> torch.Tensor | PipelineOutput:
        """Generate one image per query -> (B, 3, H, W) float in [0, 1] on the CPU.

        num_inference_steps:    denoising steps (DDIM: 25 is plenty; DDPM needs more)
        guidance_scale_context: s_c of dual classifier-free guidance (1 = no guidance, 0 = ignore the context);
                                None: the checkpoint's default (``guidance_defaults``)
        guidance_scale_prompt:  s_p, the same for the prompt
        seed:                   seeds the CPU generator of all noise, so the same seed gives the same images on any
                                device; None draws a fresh seed
        sampler, eta:           "ddim" (eta = 0 deterministic, 1 = DDPM-like noise) or "ddpm"
        return_trajectory:      also return the decoded x0 prediction of every step (a :class:`PipelineOutput`)
        context_sources:        the source view of each context image, in the context's form: only for a model
                                that reads example pairs (the Prompt-Diffusion-style baseline)
        """
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        scale_context, scale_prompt = self.resolve_guidance(guidance_scale_context, guidance_scale_prompt)
        model, device = self.model, self.device
        chosen = make_sampler(sampler, model.schedule, eta)
        query, context, context_mask, prompts = self.prepare_inputs(query, context, prompt)
        sources = None
        if context_sources is not None:
            sources, source_mask = prepare_context(context_sources, query.shape[0], self.image_size)
            if sources.shape != context.shape or not torch.equal(source_mask, context_mask):
                raise ValueError(f"context_sources {tuple(sources.shape)} must match the context "
                                 f"{tuple(context.shape)}: one source per context image.")
            sources = sources.to(device)
        cond = model.encode_conditions(query.to(device), context.to(device), context_mask.to(device), prompts,
                                       context_sources=sources)
        guided = guided_model_fn(model, cond, scale_context, scale_prompt)
        predictions = []

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = guided(x_t, t)
            if return_trajectory:
                predictions.append(model.schedule.predict_x0(out, x_t, t))  # what the sampler's step computes too
            return out

        generator = torch.Generator()
        if seed is None:
            generator.seed()  # a fresh non-deterministic seed, without touching the global RNG
        else:
            generator.manual_seed(seed)
        batch = query.shape[0]
        latents = chosen.sample(model_fn, (batch, *model.latent_shape), num_inference_steps, generator=generator,
                                progress=progress)
        images = model.decode_latents(latents).clamp(0, 1).float().cpu()
        if not return_trajectory:
            return images
        steps = torch.stack(predictions)  # steps x (B, C, h, w) -> (steps, B, C, h, w)
        decoded = model.decode_latents(steps.flatten(0, 1)).clamp(0, 1).float().cpu()  # -> (steps*B, 3, H, W)
        trajectory = decoded.view(len(predictions), batch, *decoded.shape[1:])  # -> (steps, B, 3, H, W)
        return PipelineOutput(images, trajectory, chosen.timesteps.clone())

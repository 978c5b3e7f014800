"""Train the Context Diffusion denoiser (paper Eq. 2) on a world, in two stages, resumably, on 1 or many devices.

    python -m ctxdiff_from_scratch train --world shapes --stage 1 --out runs/shapes-stage1 --minutes 15
    python -m ctxdiff_from_scratch train --world shapes --stage 2 --init runs/shapes-stage1 --out runs/shapes
    python -m ctxdiff_from_scratch train --world shapes --joint --out runs/shapes-joint      # one stage, to compare
    python -m ctxdiff_from_scratch train ... --resume                                       # continue after a crash
    python -m ctxdiff_from_scratch train ... --warm-start data/checkpoints/shapes            # a finished model, further
    accelerate launch --num_processes 2 -m ctxdiff_from_scratch train ...                    # several GPUs/processes

The objective is paper Eq. 2 with a v-prediction target by default (it learns to read colours from the context far
sooner than eps-prediction; docs/experiments.md, section 16):

    L = E_{z_0, eps, t, q, c, V} || target(z_0, eps, t) - model(z_t, t, q, [h^c ; h^V]) ||^2,
    z_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps,   target = eps  or  v = sqrt(ab_t) eps - sqrt(1 - ab_t) z_0.

``--min-snr-gamma 5`` weights each example's term by Min-SNR-gamma (Hang et al. 2023; ``min_snr_weight``), and
``--timestep-shift 3`` draws the training timesteps shifted towards pure noise (``shifted_timesteps``); both are off by
default. ``--lr-decay wsd`` holds the learning rate, then anneals it linearly to zero over the last
``--decay-fraction`` of the run's budget, steps or minutes (``lr_factor``); the 45-minute ShapesWorld recipe does that
in stage 2. What each option did to the ShapesWorld recipe: docs/experiments.md, sections 8, 10 and 11.

Stages, as the paper does with a pre-trained base model:

* **stage 1** trains the base latent UNet and the context conditioner on p(image | prompt, visual context): no query,
  no adapter. (The paper starts from a pre-trained Stable Diffusion; we have to train our own base.)
* **stage 2** loads a stage-1 model (``--init``), adds the query adapter as a trainable copy of the base UNet's
  encoder (``QueryAdapter.from_unet``), freezes the base encoder (``freeze_base_encoder``: "only the encoder of the LDM
  backbone is kept frozen") and trains the adapter, the base decoder and the conditioner.
* ``--joint`` instead trains UNet + adapter together from scratch in one run.

Condition dropout, for classifier-free guidance (Sec. 3.3). Each example independently falls in one of four cases:

    | case          | prompt  | context | probability                          | default |
    |---------------|---------|---------|--------------------------------------|---------|
    | keep both     | kept    | kept    | 1 - p_prompt - p_context + p_both    | 0.45    |
    | prompt only   | dropped | kept    | p_prompt - p_both                    | 0.45    |
    | context only  | kept    | dropped | p_context - p_both                   | 0.05    |
    | both dropped  | dropped | dropped | p_both                               | 0.05    |

so the prompt is dropped 50% of the time (the paper's rate), the visual context 10%, both together 5% (with these
defaults the two drops are independent: 0.5 * 0.1 = 0.05). The query is never dropped.

Data and reproducibility. The frozen encoders run once, up front, on a fixed pool of episodes (episode_cache.py). Step
s's whole global batch -- its k, the pooled episodes, timesteps, noise, drop cases and query inversions -- is drawn
from a generator seeded with (seed, s) only. So the data position is the step counter, a resumed run sees exactly the
batches it would have seen, and a run on N processes (or with gradient accumulation) trains on the same global batches
as one process: each process takes its slice. Checkpoints (safetensors + JSON, never pickle) hold the weights, the EMA
weights, the optimiser and LR-scheduler state, every process's RNG states and the step; a run killed with SIGKILL and
resumed with ``--resume`` logs the same losses as one that was never interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .adapter import freeze_base_encoder
from .baselines.prompt_diffusion import PairDiffusionModel
from .checkpoint import config_from_dict, load_part, save_part
from .config import COMBINE_MODES, TOKENIZERS, AdapterConfig, ContextConfig, UNET_PROFILES, UNetConfig
from .data import WORLDS, make_world
from .data.shapes import NUM_PATCH_CLASSES
from .device import get_device, seed_everything
from .episode_cache import EpisodeGroup, EpisodePool, PoolRefresher, encode_episodes, load_or_build_pool
from .model import Conditions, ContextDiffusionModel, Denoiser, FrozenParts, ModelConfig
from .runlog import CSVLogger, plot_loss_curve, read_log
from .schedule import NoiseSchedule, ScheduleConfig

DEFAULT_PARTS_ROOT = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
LOG_NAME, CURVE_NAME, SUMMARY_NAME = "train_log.csv", "train_loss.png", "train_summary.json"
PROBE_LOG_NAME, PROBE_CURVE_NAME = "probe_log.csv", "probe_loss.png"
# The memorisation probe: this many pooled ("seen") and never-trained ("unseen") episodes, the unseen ones with seeds
# from PROBE_SEED_BASE (beyond the pool, the fresh episodes and tune-guidance's).
PROBE_EPISODES, PROBE_SEED_BASE = 64, 2 * 10**8
CHECKPOINT_DIR, LATEST_NAME = "checkpoints", "latest.json"
# Fields a resumed run may change; everything else must match the interrupted run, or the losses would differ.
RESUME_OVERRIDABLE = ("steps", "minutes", "checkpoint_every", "log_every", "probe_every", "save_dtype", "threads")
LR_DECAYS = ("constant", "cosine", "wsd")


@dataclass
class TrainConfig:
    """One training run. ``TrainConfig.profile("cpu", world="glyphs", steps=500)``.

    Profiles: ``cpu`` (default, the laptop recipe), ``colab`` (a free Colab GPU), ``gpu`` (a large GPU) and ``tiny``
    (tests). ``batch_size`` is the *global* batch per optimiser step; it is split over ``grad_accum`` micro-steps and
    over the processes of a distributed run, so those two never change the result. ``steps`` fixes the LR schedule;
    ``minutes`` only caps the wall time (the run stops early, saving what it has).
    """

    profile: str = "cpu"
    world: str = "shapes"
    stage: int = 1
    joint: bool = False
    parts: str | None = None      # frozen parts (autoencoder, encoders, tokenizer); default data/checkpoints/<world>
    init: str | None = None       # stage 2: the stage-1 model folder
    # a finished stage-1 / joint model folder whose denoiser weights start this run (``warm_start_writes``)
    warm_start: str | None = None
    out: str | None = None        # default runs/<world>-stage<stage> or runs/<world>-joint
    unet_profile: str = "cpu"
    # None: the UNet profile's. Cross-attention at the 8x8 level too, (True, True, True) with head_dim 16, is what
    # let the denoiser bind colours to shapes (docs/experiments.md, sections 19 and 21).
    attention_levels: tuple[bool, ...] | None = None
    head_dim: int | None = None
    prediction_type: str = "v_prediction"
    steps: int = 2000
    minutes: float | None = None
    # 32, not 64: in a fixed time budget, twice the steps on half the batch draw better images with context; 16 was
    # worse again (docs/experiments.md, section 4).
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_decay: str = "constant"    # after warm-up: one of LR_DECAYS (``lr_factor``)
    decay_fraction: float = 0.2   # "wsd": the last fraction of the run's budget, over which the lr falls to zero
    grad_clip: float = 1.0
    min_snr_gamma: float = 0.0     # > 0: Min-SNR-gamma loss weights (Hang et al. 2023); 0: plain Eq. 2
    timestep_shift: float = 1.0    # > 1: draw noisier timesteps more often (``shifted_timesteps``); 1: uniform
    ema_decay: float = 0.995       # time constant ~200 steps: a laptop run is only a few thousand steps long
    k_choices: tuple[int, ...] = (1, 2, 3)
    combine: str | None = None     # merge of the k context token sequences; None: "sum" in stage 1, --init's in 2
    tokenizer: str | None = None   # the context images' tokens (TOKENIZERS); None: "frozen" in stage 1, --init's in 2
    baseline: str | None = None    # "prompt-diffusion": train the PD-style baseline (joint only) instead of the model
    # > 0: add this times the latent tokenizer's patch class loss (context_tokenizer.py) to Eq. 2; shapes only
    patch_class_weight: float = 0.0
    p_drop_prompt: float = 0.5
    p_drop_context: float = 0.1
    p_drop_both: float = 0.05
    # > 0: each example's query is inverted (1 - query) with this probability (``invert_queries``); 0: off
    query_invert_prob: float = 0.0
    pool_size: int = 6000
    pool_cache: str | None = None  # a .safetensors file to keep the encoded pool between runs
    fresh_per_step: int = 0        # > 0: never-seen episodes written into every k group per step (PoolRefresher)
    probe_every: int = 500         # steps between memorisation probes (probe_log.csv); 0: none
    mixed_precision: str = "auto"  # "auto" = bf16 autocast on CUDA, none elsewhere; or "no" / "bf16"
    log_every: int = 10
    checkpoint_every: int = 500
    save_dtype: str = "float32"    # dtype of the final model files; "float16" halves them for shipping
    seed: int = 0
    threads: int | None = None

    PROFILES: ClassVar[dict[str, dict]] = {
        "cpu": {},
        "colab": dict(unet_profile="colab", steps=20000, batch_size=128, lr=3e-4, pool_size=20000, warmup_steps=500,
                      checkpoint_every=2000, log_every=50, ema_decay=0.9995, probe_every=2000),
        "gpu": dict(unet_profile="gpu", steps=50000, batch_size=256, lr=2e-4, pool_size=50000, warmup_steps=1000,
                    checkpoint_every=5000, log_every=100, ema_decay=0.9999, probe_every=5000),
        "tiny": dict(unet_profile="tiny", steps=8, batch_size=8, pool_size=24, warmup_steps=2, log_every=1,
                     checkpoint_every=4, ema_decay=0.9, probe_every=0),
    }

    def __post_init__(self) -> None:
        self.k_choices = tuple(int(k) for k in self.k_choices)
        if self.attention_levels is not None:
            self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if self.profile not in self.PROFILES:
            raise ValueError(f"unknown training profile {self.profile!r}; choose one of {list(self.PROFILES)}.")
        if self.world not in WORLDS:
            raise ValueError(f"unknown world {self.world!r}; choose one of {WORLDS}.")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (base model) or 2 (query adapter), got {self.stage!r}.")
        if self.joint and self.stage != 1:
            raise ValueError("--joint trains base and adapter together in a single run: drop --stage 2.")
        if self.stage == 2 and not self.init:
            raise ValueError("stage 2 starts from a trained stage-1 model: pass --init FOLDER (the --out of a "
                             "stage-1 run).")
        if self.warm_start and (self.stage != 1 or self.baseline):
            raise ValueError("--warm-start continues a finished stage-1 or joint Context Diffusion model with new "
                             "options; stage 2 starts from --init, and the baseline has no warm start.")
        if self.combine is not None and self.combine not in COMBINE_MODES:
            raise ValueError(f"unknown combine mode {self.combine!r}; choose one of {COMBINE_MODES}.")
        if self.baseline not in (None, "prompt-diffusion"):
            raise ValueError(f"unknown baseline {self.baseline!r}; the one trained here is 'prompt-diffusion'.")
        if self.baseline and not self.joint:
            raise ValueError("the Prompt-Diffusion-style baseline trains its UNet and pair adapter together: add "
                             "--joint (it has no stage-1 model of its own).")
        if self.baseline and self.tokenizer not in (None, "frozen"):
            raise ValueError("the Prompt-Diffusion-style baseline reads no visual tokens: drop --tokenizer.")
        if self.tokenizer is not None and self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown context tokenizer {self.tokenizer!r}; choose one of {TOKENIZERS}.")
        if self.patch_class_weight < 0:
            raise ValueError(f"patch_class_weight must be >= 0 (0: off), got {self.patch_class_weight}.")
        if self.patch_class_weight and (self.tokenizer not in ("latents", "frozen+latents") or self.stage != 1
                                        or self.world != "shapes"):
            raise ValueError("--patch-class-weight teaches the trainable tokenizer which shape each context patch "
                             "shows: it needs --tokenizer latents (or frozen+latents), stage 1 or --joint, and "
                             "--world shapes (whose layouts label every pixel).")
        if not 0 <= self.query_invert_prob <= 1:
            raise ValueError(f"query_invert_prob must be a probability in [0, 1] (0: off), got "
                             f"{self.query_invert_prob}.")
        if self.query_invert_prob and self.baseline:
            raise ValueError("--query-invert-prob inverts the query alone; the Prompt-Diffusion-style baseline also "
                             "reads its examples' source maps, which would keep their polarity: drop one of the two.")
        if self.unet_profile not in UNET_PROFILES:
            raise ValueError(f"unknown UNet profile {self.unet_profile!r}; choose one of {sorted(UNET_PROFILES)}.")
        for name in ("steps", "batch_size", "grad_accum", "pool_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.fresh_per_step < 0 or self.probe_every < 0:
            raise ValueError(f"fresh_per_step and probe_every must be >= 0 (0: off), got {self.fresh_per_step} and "
                             f"{self.probe_every}.")
        if self.fresh_per_step > self.pool_size // len(self.k_choices):
            raise ValueError(f"fresh_per_step={self.fresh_per_step} new episodes per k group and step exceed a group "
                             f"of the pool ({self.pool_size} // {len(self.k_choices)} episodes): raise --pool-size.")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}: "
                             "each micro-step takes an equal share of the global batch.")
        if not self.k_choices or min(self.k_choices) < 1:
            raise ValueError(f"k_choices must be positive context sizes, e.g. (1, 2, 3); got {self.k_choices}. "
                             "Training with k = 0 is what context dropout already does.")
        if not (0 <= self.p_drop_both <= min(self.p_drop_prompt, self.p_drop_context)
                and self.p_drop_prompt + self.p_drop_context - self.p_drop_both <= 1):
            raise ValueError(f"drop probabilities p_prompt={self.p_drop_prompt}, p_context={self.p_drop_context}, "
                             f"p_both={self.p_drop_both} are not a joint distribution: need 0 <= p_both <= "
                             "min(p_prompt, p_context) and p_prompt + p_context - p_both <= 1.")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be > 0 (Min-SNR weighting; 5 in Hang et al. 2023) or 0 (off), got "
                             f"{self.min_snr_gamma}.")
        if not self.timestep_shift > 0:
            raise ValueError(f"timestep_shift must be > 0 (1 draws timesteps uniformly, 3 favours noisy ones), got "
                             f"{self.timestep_shift}.")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"need lr > 0, weight_decay >= 0, grad_clip > 0 and 0 <= ema_decay < 1; got lr={self.lr}, "
                             f"weight_decay={self.weight_decay}, grad_clip={self.grad_clip}, "
                             f"ema_decay={self.ema_decay}.")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}.")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1] (the share of the run's budget spent annealing the "
                             f"learning rate in 'wsd'), got {self.decay_fraction}.")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"mixed_precision must be 'auto', 'no' or 'bf16', got {self.mixed_precision!r}.")
        if self.save_dtype not in ("float32", "float16"):
            raise ValueError(f"save_dtype must be 'float32' or 'float16', got {self.save_dtype!r}.")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive (or None for no time cap), got {self.minutes}.")
        ScheduleConfig(prediction_type=self.prediction_type)  # validates the name with a helpful message
        if self.stage == 2 and self.unet_overrides:
            raise ValueError("stage 2 keeps its --init model's UNet: drop --attention-levels and --head-dim.")
        UNetConfig.profile(self.unet_profile, **self.unet_overrides)  # a shape the UNet cannot take fails here

    @property
    def unet_overrides(self) -> dict:
        """The UNet fields this run sets beyond its profile (``attention_levels``, ``head_dim``)."""
        values = {"attention_levels": self.attention_levels, "head_dim": self.head_dim}
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_profile(cls, name: str = "cpu", **overrides) -> "TrainConfig":
        """The named profile with ``overrides`` on top."""
        if name not in cls.PROFILES:
            raise ValueError(f"unknown training profile {name!r}; choose one of {list(cls.PROFILES)}.")
        return cls(**{**cls.PROFILES[name], "profile": name, **overrides})

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.world}-{'joint' if self.joint else f'stage{self.stage}'}")

    @property
    def parts_dir(self) -> Path:
        return Path(self.parts) if self.parts else DEFAULT_PARTS_ROOT / self.world


# ---------------------------------------------------------------------------------------------------------------------
# The math of one step: condition dropout, the batch drawn for a step, the Eq. 2 loss, the LR schedule, EMA.
# ---------------------------------------------------------------------------------------------------------------------
def drop_case_probabilities(config: TrainConfig) -> torch.Tensor:
    """P(keep both), P(drop prompt only), P(drop context only), P(drop both): see the module docstring's table."""
    p_p, p_c, p_b = config.p_drop_prompt, config.p_drop_context, config.p_drop_both
    return torch.tensor([1 - p_p - p_c + p_b, p_p - p_b, p_c - p_b, p_b], dtype=torch.float64).clamp(min=0)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws step ``step``'s batch: a function of (seed, step) alone."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


@dataclass
class GlobalBatch:
    """Everything random about one optimiser step's global batch (B examples); tensors on the CPU."""

    k: int                     # context images per example (one k per step, so the batch stacks)
    index: torch.Tensor        # (B,) episodes of the pool's k-group
    t: torch.Tensor            # (B,) timesteps in [0, T): uniform, or shifted towards T (``shifted_timesteps``)
    noise: torch.Tensor        # (B, C, h, w) eps ~ N(0, I)
    drop_prompt: torch.Tensor  # (B,) bool
    drop_context: torch.Tensor  # (B,) bool
    invert_query: torch.Tensor  # (B,) bool: train on 1 - query (``invert_queries``)

    def slice(self, part: slice) -> "GlobalBatch":
        return GlobalBatch(self.k, self.index[part], self.t[part], self.noise[part], self.drop_prompt[part],
                           self.drop_context[part], self.invert_query[part])


def draw_batch(pool: EpisodePool, config: TrainConfig, step: int, latent_shape: tuple[int, ...],
               num_timesteps: int) -> GlobalBatch:
    """Draw step ``step``'s global batch from ``step_generator(seed, step)``."""
    g = step_generator(config.seed, step)
    B = config.batch_size
    k = pool.k_choices[int(torch.randint(len(pool.k_choices), (1,), generator=g))]
    index = torch.randint(len(pool.groups[k]), (B,), generator=g)
    if config.timestep_shift == 1:
        t = torch.randint(num_timesteps, (B,), generator=g)
    else:
        t = shifted_timesteps(torch.rand(B, generator=g, dtype=torch.float64), config.timestep_shift, num_timesteps)
    noise = torch.randn(B, *latent_shape, generator=g)
    case = torch.multinomial(drop_case_probabilities(config), B, replacement=True, generator=g)  # (B,) in 0..3
    invert = torch.zeros(B, dtype=torch.bool)
    if config.query_invert_prob:  # drawn last, so runs without it keep the batches they always had
        invert = torch.rand(B, generator=g) < config.query_invert_prob
    return GlobalBatch(k, index, t, noise, drop_prompt=(case == 1) | (case == 3),
                       drop_context=(case == 2) | (case == 3), invert_query=invert)


def invert_queries(cond: Conditions, invert: torch.Tensor) -> Conditions:
    """Query polarity augmentation: the queries of the examples where ``invert`` (B,) is True become 1 - query.

    Every ShapesWorld map is drawn light on a dark ground, while a hand-drawn sketch is dark ink on white paper; a model
    that has only seen the first reads a sketch's white ground as the image's background (``benchmarks/
    query_polarity.py``). Inverting a query keeps its layout, so the target stays the same for every ShapesWorld task
    (edges, regions and depth order of an inverted map are the map's; the edges, segmentation and depth of an inverted
    image are the image's), and the model learns to read structure in either polarity. It also makes dark-on-light
    maps in-domain, which sketch2img's queries then partly are.
    """
    if not invert.any():
        return cond
    query = torch.where(invert.view(-1, 1, 1, 1), 1 - cond.query, cond.query)  # (B, 3, H, W)
    return dataclasses.replace(cond, query=query)


def shifted_timesteps(u: torch.Tensor, shift: float, num_timesteps: int) -> torch.Tensor:
    """Map uniform u in [0, 1) to timesteps whose density leans towards pure noise: (B,) float -> (B,) long.

    s = t / T is drawn as s = shift * u / (1 + (shift - 1) * u): the time shift that Stable Diffusion 3 (Esser et al.
    2024, "resolution-dependent shifting") applies to its schedule, used here only to *draw* training timesteps (the
    noise schedule and the samplers are unchanged). shift = 1 is uniform; shift = 3 draws s > 2/3 for 60% of the
    examples instead of a third. Why lean towards noise: a shape's colour can be read off z_t itself until z_t is
    nearly pure noise, so only the noisiest steps teach the model to take it from the context."""
    s = shift * u / (1 + (shift - 1) * u)
    return (s * num_timesteps).long().clamp(max=num_timesteps - 1)


def diffusion_loss(denoiser: nn.Module, schedule: NoiseSchedule, z0: torch.Tensor, cond, t: torch.Tensor,
                   noise: torch.Tensor, drop_prompt: torch.Tensor, drop_context: torch.Tensor,
                   min_snr_gamma: float = 0.0) -> torch.Tensor:
    """Paper Eq. 2: the mean over the batch and latent elements of || target - model(z_t, t, q, [h^c ; h^V]) ||^2,
    each example weighted by ``min_snr_weight`` when ``min_snr_gamma`` > 0."""
    # z_t = sqrt(ab_t) z_0 + sqrt(1 - ab_t) eps
    z_t = schedule.add_noise(z0, noise, t)
    # target = eps (epsilon) or v = sqrt(ab_t) eps - sqrt(1 - ab_t) z_0 (v_prediction)
    target = schedule.training_target(z0, noise, t)
    prediction = denoiser(z_t, t, cond, drop_prompt, drop_context)
    if min_snr_gamma == 0:
        return F.mse_loss(prediction.float(), target)  # fp32 even under bf16 autocast
    per_example = (prediction.float() - target).pow(2).flatten(1).mean(dim=1)  # (B, C, h, w) -> (B,)
    return (min_snr_weight(schedule, t, min_snr_gamma) * per_example).mean()


def min_snr_weight(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, Eq. 8): the x_0 loss weighted by min(SNR_t, gamma), written for
    the target the schedule trains: min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v. (B,) -> (B,)

    Low-noise steps (SNR > gamma) stop dominating the gradient, so more of it goes to the noisy steps where the
    layout and the colours are decided."""
    snr = schedule.snr(t).to(t.device).float()
    if schedule.config.prediction_type == "epsilon":
        return (gamma / snr).clamp(max=1.0)  # = min(SNR, gamma) / SNR, exact even where SNR ~ 0 (pure noise)
    return snr.clamp(max=gamma) / (snr + 1)


def lr_factor(step: int, config: TrainConfig, elapsed_seconds: float = 0.0) -> float:
    """Multiplier of ``lr`` at ``step``: linear warm-up, then one of ``LR_DECAYS``.

    * "constant": 1 after the warm-up;
    * "cosine": lr_t = lr / 2 (1 + cos(pi * progress)), progress = the share of the steps after the warm-up;
    * "wsd", warmup-stable-decay (Hu et al. 2024, MiniCPM): constant, then linear to zero over the last
      ``decay_fraction`` of the run's budget, so the run ends on annealed weights wherever it stops. The budget used
      is the larger of step / steps and, with a time cap, elapsed_seconds / (60 minutes): a run that stops on its
      clock anneals by its clock (its schedule then depends on the machine's speed, as its stopping step does).
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_decay == "constant":
        return 1.0
    if config.lr_decay == "wsd":
        used = step / config.steps
        if config.minutes is not None:
            used = max(used, elapsed_seconds / (60 * config.minutes))
        return min(1.0, max(0.0, (1 - used) / config.decay_fraction))
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    # lr_t = lr / 2 (1 + cos(pi * progress))
    return 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's parameters: theta_ema <- d theta_ema + (1 - d) theta.

    The decay warms up as d_s = min(decay, (1 + s) / (10 + s)), so early averages are not dominated by the random
    initialisation. Frozen parameters stay exactly equal to their source (lerp of equal values is exact).
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        names, params = zip(*((n, p.detach().float()) for n, p in module.named_parameters()))
        # theta_ema <- theta_ema + (1 - d) (theta - theta_ema), all tensors in one call (4x faster than a loop)
        torch._foreach_lerp_([self.shadow[n] for n in names], list(params), 1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            p.copy_(self.shadow[name])


# ---------------------------------------------------------------------------------------------------------------------
# Building the model of a stage, and its optimiser.
# ---------------------------------------------------------------------------------------------------------------------
def build_model(config: TrainConfig) -> ContextDiffusionModel:
    """Stage 1: base model (no adapter) on the frozen parts. Stage 2: the stage-1 model + an adapter copied from its
    encoder, base encoder frozen. Joint: base + adapter from scratch, everything trainable."""
    schedule = ScheduleConfig(beta_schedule="cosine", prediction_type=config.prediction_type)
    if config.stage == 2:
        base = ContextDiffusionModel.from_pretrained(config.init)
        if base.adapter is not None:
            raise ValueError(f"--init {config.init} already has a query adapter (it is a stage-2 or joint model); "
                             "stage 2 starts from the output of a stage-1 run.")
        if config.combine not in (None, base.config.context.combine):
            raise ValueError(f"--combine {config.combine} differs from the stage-1 model's "
                             f"{base.config.context.combine!r} ({config.init}); stage 2 keeps the stage-1 model's "
                             "way of merging the context: drop --combine.")
        if config.tokenizer not in (None, base.config.context.tokenizer):
            raise ValueError(f"--tokenizer {config.tokenizer} differs from the stage-1 model's "
                             f"{base.config.context.tokenizer!r} ({config.init}); stage 2 keeps it: drop --tokenizer.")
        model_config = dataclasses.replace(base.config, adapter=AdapterConfig(
            downsample_factor=base.autoencoder.config.downsample_factor))
        model = ContextDiffusionModel(model_config, base.frozen_parts)
        for name, part in base.denoiser.named_children():  # conditioner, UNet, trained tokenizer: all but the adapter
            getattr(model.denoiser, name).load_state_dict(part.state_dict())
    else:
        parts = FrozenParts.load(config.parts_dir)
        model_config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder,
                                              world=config.world, unet_profile=config.unet_profile,
                                              adapter=config.joint, schedule=schedule,
                                              combine=config.combine or ContextConfig.combine,
                                              tokenizer=config.tokenizer or ContextConfig.tokenizer,
                                              patch_classes=NUM_PATCH_CLASSES if config.patch_class_weight else 0,
                                              **config.unet_overrides)
        model_class = PairDiffusionModel if config.baseline else ContextDiffusionModel
        model = model_class(model_config, parts)
    if model.adapter is not None:
        # ControlNet's trainable copy: the adapter's encoder starts as the base encoder (random in a joint run)
        model.denoiser.adapter = type(model.adapter).from_unet(model.unet, model_config.adapter)
    if config.stage == 2:
        freeze_base_encoder(model.unet)
    return model


def load_warm_start(model: ContextDiffusionModel, folder: Path) -> None:
    """Put the denoiser weights of the finished model in ``folder`` into ``model`` (its optimiser, LR schedule and EMA
    then start afresh); the two must have the same architecture."""
    state_dict, saved_config, _ = load_part(folder, "denoiser")
    ours = json.loads(json.dumps(model.config.to_dict()))  # tuples as the saved file's lists
    differ = sorted(key for key in set(ours) | set(saved_config) if ours.get(key) != saved_config.get(key))
    if differ:
        raise ValueError(f"--warm-start {folder}: its denoiser differs from this run's in {differ}; give this run the "
                         "architecture options of the model's training command (its train_summary.json).")
    model.denoiser.load_state_dict(state_dict)


def warm_start_writes(folder: Path, config: TrainConfig) -> int:
    """The first fresh-episode write of a run warm-started from ``folder``: the one after its parent's last, so the
    continued run never sees an episode its parent was trained on (``PoolRefresher``'s seeds follow the write)."""
    summary_path = folder / SUMMARY_NAME
    if not summary_path.is_file():
        raise FileNotFoundError(f"--warm-start {folder} has no {SUMMARY_NAME}: the folder must be the output of a "
                                "finished training run (or a shipped model folder that keeps it).")
    parent = json.loads(summary_path.read_text())
    parent_k = tuple(parent["config"]["k_choices"])
    if parent_k != config.k_choices:
        raise ValueError(f"--warm-start {folder} was trained with --k {' '.join(map(str, parent_k))}; keep the same "
                         "context sizes, so the fresh episodes' seeds stay distinct from its own.")
    return parent.get("fresh_first_write", 0) + parent["fresh_episodes"] // len(parent_k)


def make_optimizer(denoiser: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW on the trainable parameters; weight decay on matrices and conv kernels only (not biases, norms).

    The fused kernel (CPU and CUDA) updates all tensors in one call: 2-5x faster than the per-tensor loop, which
    otherwise costs ~10% of a cpu-profile step.
    """
    trainable = [(n, p) for n, p in denoiser.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    fused = trainable[0][1].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), fused=fused)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors for tensors, JSON for the rest.
# ---------------------------------------------------------------------------------------------------------------------
def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """optimizer.state_dict() -> (tensors keyed "state.<param id>.<name>", JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in rest["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's Python, NumPy and torch RNG states: the big arrays as uint8 tensors, the rest as JSON."""
    version, mt, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors = {"python": torch.from_numpy(np.asarray(mt, dtype=np.uint32).view(np.uint8).copy()),
               "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.uint32).view(np.uint8).copy()),
               "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors, {"python_version": version, "python_gauss": gauss, "numpy_pos": int(np_pos),
                     "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss)}


def set_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    mt = tuple(int(x) for x in tensors["python"].numpy().view(np.uint32))
    random.setstate((rest["python_version"], mt, rest["python_gauss"]))
    np.random.set_state(("MT19937", tensors["numpy"].numpy().view(np.uint32), rest["numpy_pos"],
                         rest["numpy_has_gauss"], rest["numpy_gauss"]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


def _save_tensors_json(folder: Path, name: str, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(rest, indent=1, sort_keys=True) + "\n")


def _load_tensors_json(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(folder / f"{name}.safetensors")), json.loads((folder / f"{name}.json").read_text())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The folder named by ``out_dir/checkpoints/latest.json``, or None when the run has no checkpoint yet."""
    pointer = out_dir / CHECKPOINT_DIR / LATEST_NAME
    if not pointer.is_file():
        return None
    return out_dir / CHECKPOINT_DIR / json.loads(pointer.read_text())["folder"]


# ---------------------------------------------------------------------------------------------------------------------
# The trainer.
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class MemorisationProbe:
    """Fixed inputs for comparing Eq. 2's loss on trained-on ("seen") and never-seen ("unseen") episodes of one k.

    Timesteps are spread evenly over the noisier half of the schedule, where z_t says little about z_0 and the model
    has to take the colours from the context -- or from its memory of the pooled episodes; a second measurement at
    the last timestep alone scores the model's conditional mean E[z_0 | query, context], where memorising showed
    first in the in-context diagnostics. The trainer runs it during training (``probe_log.csv``);
    ``benchmarks/pool_memorisation.py`` runs it on a finished model.
    """

    k: int
    unseen: EpisodeGroup  # n episodes from PROBE_SEED_BASE on: beyond every pool, fresh episode and evaluation seed
    t: torch.Tensor       # (n,) timesteps from T/2 to T - 1
    noise: torch.Tensor   # (n, C, h, w)

    @classmethod
    def build(cls, model: ContextDiffusionModel, world, k: int, n: int, seed: int = 0) -> "MemorisationProbe":
        T = model.schedule.num_train_timesteps
        generator = torch.Generator().manual_seed(seed)
        return cls(k, encode_episodes(model, world, list(range(PROBE_SEED_BASE, PROBE_SEED_BASE + n)), k),
                   torch.linspace(T // 2, T - 1, n).long(), torch.randn(n, *model.latent_shape, generator=generator))

    @torch.no_grad()
    def losses(self, denoiser: nn.Module, schedule: NoiseSchedule, seen: EpisodeGroup,
               device: torch.device | str) -> dict[str, float]:
        """Eq. 2 loss with every condition given on ``seen``'s first n episodes and on the unseen ones, at t >= T/2
        and at t = T - 1 ("_T"); a growing gap (unseen - seen) is memorising."""
        index = torch.arange(len(self.t))
        keep = torch.zeros(len(index), dtype=torch.bool, device=device)
        last = torch.full_like(self.t, schedule.num_train_timesteps - 1)
        losses = {}
        for suffix, t in (("", self.t), ("_T", last)):
            for name, group in (("seen", seen), ("unseen", self.unseen)):
                z0, cond = group.batch(index, device)
                losses[f"loss_{name}{suffix}"] = diffusion_loss(denoiser, schedule, z0, cond, t.to(device),
                                                                self.noise.to(device), keep, keep).item()
            losses[f"gap{suffix}"] = losses[f"loss_unseen{suffix}"] - losses[f"loss_seen{suffix}"]
        return losses


class Trainer:
    """Owns one run: model, pool, optimiser, EMA, logger and the Accelerate state; ``run()`` trains."""

    def __init__(self, config: TrainConfig, resume_from: Path | None = None, command: str | None = None):
        from accelerate import Accelerator  # imported here: ``import ctxdiff_from_scratch.train`` stays light

        self.config, self.command = config, command
        if config.threads:
            torch.set_num_threads(config.threads)
        device = get_device()
        mixed = config.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)
        self.device, self.rank, self.world_size = (self.accelerator.device, self.accelerator.process_index,
                                                   self.accelerator.num_processes)
        per_process = config.batch_size // config.grad_accum
        if per_process % self.world_size:
            raise ValueError(f"batch_size / grad_accum = {per_process} examples per micro-step cannot be split "
                             f"evenly over {self.world_size} processes; choose a multiple of {self.world_size}.")
        self.micro = per_process // self.world_size
        self.out = config.out_dir
        self.is_main = self.accelerator.is_main_process

        seed_everything(config.seed)
        self.model = build_model(config).to(self.device)
        if config.warm_start and resume_from is None:  # a resumed run's checkpoint holds newer weights
            load_warm_start(self.model, Path(config.warm_start))
        self.model.train()
        # channels_last: faster denoiser steps on a CPU (benchmarks/denoiser_throughput.py); the
        # checkpoints are written contiguous, so loading them does not depend on it
        self.denoiser: Denoiser = self.model.denoiser.to(memory_format=torch.channels_last)
        self.trainable = [p for p in self.denoiser.parameters() if p.requires_grad]
        self.world = make_world(config.world, "train", self.model.config.image_size)
        start = time.perf_counter()
        cache = config.pool_cache
        if cache and not self.is_main:  # the main process writes the cache; the others then read it
            self.accelerator.wait_for_everyone()
        self.pool = load_or_build_pool(self.model, self.world, config.pool_size, config.k_choices, cache,
                                       progress=self.is_main)
        if cache and self.is_main:
            self.accelerator.wait_for_everyone()
        self.pool_seconds = time.perf_counter() - start
        # a resumed run keeps its own record: the warm-start folder may since hold another model
        self.first_write = (json.loads((resume_from / "trainer_state.json").read_text()).get("fresh_first_write", 0)
                            if resume_from is not None else
                            warm_start_writes(Path(config.warm_start), config) if config.warm_start else 0)
        self.refresher = (PoolRefresher(self.pool, self.model, self.world, config.fresh_per_step, self.first_write)
                          if config.fresh_per_step else None)
        self.probe = self._build_probe() if config.probe_every and self.is_main else None

        self.ema = EMA(self.denoiser, config.ema_decay)
        self.optimizer = make_optimizer(self.denoiser, config)
        # Training seconds so far, one value on every process (``train_step`` agrees on it): "wsd" anneals by it.
        self.clock = 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config, self.clock))
        self.step, self.elapsed, self.interval = 0, 0.0, empty_interval()
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        if self.refresher is not None:
            self.refresher.catch_up(self.step, progress=self.is_main)  # the pool as it was at this step
        self.ddp_denoiser, self.optimizer = self.accelerator.prepare(self.denoiser, self.optimizer)
        self.schedule = self.model.schedule
        self.last_checkpoint: Path | None = resume_from
        if self.is_main:
            if resume_from is not None:
                truncate_log(self.out / LOG_NAME, self.step)
                truncate_log(self.out / PROBE_LOG_NAME, self.step)
            self.logger = CSVLogger(self.out / LOG_NAME, resume=resume_from is not None)
            if self.probe is not None:
                self.probe_logger = CSVLogger(self.out / PROBE_LOG_NAME, resume=resume_from is not None)

    # -- the memorisation probe ---------------------------------------------------------------------------------------
    def _build_probe(self) -> "MemorisationProbe":
        """The probe on the largest k: the pool's first n episodes of that k against n never trained on."""
        k = max(self.config.k_choices)
        n = min(PROBE_EPISODES, len(self.pool.groups[k]))
        return MemorisationProbe.build(self.model, self.world, k, n, self.config.seed)

    def probe_losses(self) -> dict[str, float]:
        """``MemorisationProbe.losses`` on the pool's first episodes of the probe's k ("seen": trained on, unless
        refreshed away)."""
        self.denoiser.eval()  # no dropout: the probe must not draw from the training's random streams
        losses = self.probe.losses(self.denoiser, self.schedule, self.pool.groups[self.probe.k], self.device)
        self.denoiser.train()
        return losses

    # -- one step ---------------------------------------------------------------------------------------------------
    def train_step(self) -> tuple[float, float, float]:
        """One optimiser step on the global batch of ``self.step``; returns the mean Eq. 2 loss, grad norm and patch
        class loss (0 without ``patch_class_weight``) over processes."""
        if self.refresher is not None:
            self.refresher.refresh(self.step)
        batch = draw_batch(self.pool, self.config, self.step, self.model.latent_shape,
                           self.schedule.num_train_timesteps)
        group = self.pool.groups[batch.k]
        share = self.config.batch_size // self.config.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        class_sum = torch.zeros((), device=self.device)
        weight = self.config.patch_class_weight
        for m in range(self.config.grad_accum):
            start = m * share + self.rank * self.micro  # micro-step m, this process's slice of it
            part = batch.slice(slice(start, start + self.micro))
            z0, cond = group.batch(part.index, self.device)
            cond = invert_queries(cond, part.invert_query.to(self.device))
            last = m == self.config.grad_accum - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.ddp_denoiser)
            with sync:
                with self.accelerator.autocast():
                    loss = diffusion_loss(self.ddp_denoiser, self.schedule, z0, cond, part.t.to(self.device),
                                          part.noise.to(self.device), part.drop_prompt.to(self.device),
                                          part.drop_context.to(self.device), self.config.min_snr_gamma)
                    class_loss = torch.zeros((), device=self.device)
                    if weight:  # L = Eq. 2 + w * L_cls (context_tokenizer.py), on the tokens of this forward
                        class_loss = self.denoiser.context_tokenizer.patch_class_loss(
                            cond.context_mask, group.patch_class_shares(part.index, self.device))
                self.accelerator.backward((loss + weight * class_loss) / self.config.grad_accum)
            loss_sum += loss.detach()
            class_sum += class_loss.detach()
        grad_norm = self.accelerator.clip_grad_norm_(self.trainable, self.config.grad_clip)
        elapsed = self.elapsed_now()
        over_time = float(self.config.minutes is not None and elapsed >= 60 * self.config.minutes)
        stats = torch.stack([loss_sum / self.config.grad_accum, grad_norm.float().to(self.device),
                             torch.tensor(over_time, device=self.device), torch.tensor(elapsed, device=self.device),
                             class_sum / self.config.grad_accum])
        loss_value, norm_value, self.stop_for_time, self.clock, class_value = \
            self.accelerator.reduce(stats, "mean").tolist()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            raise FloatingPointError(
                f"training diverged at step {self.step + 1}: loss = {loss_value}, gradient norm = {norm_value}. "
                f"This step's update was not applied. Last checkpoint: {self.last_checkpoint or 'none yet'}. Lower "
                f"the learning rate (--lr, now {self.config.lr}) or check the data, then start again or continue "
                "from the checkpoint with --resume.")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.denoiser, self.step)
        self.step += 1
        return loss_value, norm_value, class_value

    def elapsed_now(self) -> float:
        """Training seconds over all sessions of this run (a resumed run continues the count)."""
        return self.elapsed + time.perf_counter() - self.session_start

    # -- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        config = self.config
        self.session_start, self.stop_for_time = time.perf_counter(), 0.0
        start_step, mark, mark_step = self.step, time.perf_counter(), self.step
        bar = tqdm(total=config.steps, initial=self.step, desc=f"train {config.world} "
                   f"{'joint' if config.joint else f'stage {config.stage}'}", disable=not self.is_main)
        while self.step < config.steps and not self.stop_for_time:
            loss, grad_norm, class_loss = self.train_step()
            self.interval["loss"] += loss
            self.interval["class_loss"] += class_loss
            self.interval["count"] += 1
            if self.step % config.log_every == 0:
                now = time.perf_counter()
                img_per_s = (self.step - mark_step) * config.batch_size / max(now - mark, 1e-9)
                mark, mark_step = now, self.step
                mean_loss = self.interval["loss"] / self.interval["count"]
                extra = ({"patch_class_loss": self.interval["class_loss"] / self.interval["count"]}
                         if config.patch_class_weight else {})
                self.interval = empty_interval()
                if self.is_main:
                    self.logger.log(step=self.step, loss=mean_loss, lr=self.scheduler.get_last_lr()[0],
                                    grad_norm=grad_norm, img_per_s=img_per_s, elapsed_s=self.elapsed_now(), **extra)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{img_per_s:.0f}")
            bar.update(1)
            if self.probe is not None and self.step % config.probe_every == 0:
                self.probe_logger.log(step=self.step, **self.probe_losses())
            if self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        train_seconds = time.perf_counter() - self.session_start
        if self.last_checkpoint is None or self.last_checkpoint.name != checkpoint_name(self.step):
            self.save_checkpoint()
        return self.finish(start_step, train_seconds)

    def finish(self, start_step: int, train_seconds: float) -> dict:
        """Final model (EMA weights) via ``save_pretrained``, the loss curve and ``train_summary.json``."""
        from accelerate.utils import gather_object

        hashes = gather_object([weights_sha1(self.denoiser)])
        images = (self.step - start_step) * self.config.batch_size
        summary = {
            "command": self.command, "world": self.config.world,
            "stage": "joint" if self.config.joint else self.config.stage, "steps": self.step,
            "stopped_for_time": bool(self.stop_for_time), "processes": self.world_size,
            "train_seconds_this_session": round(train_seconds, 1),
            "train_seconds_total": round(self.elapsed_now(), 1),
            "images_per_second": round(images / max(train_seconds, 1e-9), 1),
            "pool_seconds": round(self.pool_seconds, 1), "pool_episodes": len(self.pool),
            "pool_megabytes": round(self.pool.nbytes() / 2**20, 1),
            "fresh_episodes": self.step * self.config.fresh_per_step * len(self.config.k_choices),
            "fresh_first_write": self.first_write,
            "parameters": {"trainable": sum(p.numel() for p in self.trainable),
                           "denoiser": sum(p.numel() for p in self.denoiser.parameters())},
            "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, "
                       f"{self.device}".strip(),
            "rank_weight_sha1": hashes, "config": config_to_dict(self.config),
        }
        if self.is_main:
            log = read_log(self.out / LOG_NAME) if (self.out / LOG_NAME).is_file() else {}
            losses = log.get("loss", [])
            tail = losses[-max(1, len(losses) // 10):] if losses else []
            summary["final_loss"] = round(sum(tail) / len(tail), 5) if tail else None
            probe_path = self.out / PROBE_LOG_NAME
            probe = read_log(probe_path) if probe_path.is_file() and probe_path.stat().st_size else {}
            if probe:
                summary["probe"] = {key: values[-1] for key, values in probe.items()}
            self.ema.copy_to(self.denoiser)
            dtype = torch.float16 if self.config.save_dtype == "float16" else None
            self.model.save_pretrained(self.out, dtype=dtype, metadata={"training": summary})
            stage = "joint" if self.config.joint else f"stage {self.config.stage}"
            if losses:
                title = f"{self.config.world}, {stage}: Eq. 2 loss ({self.config.prediction_type})"
                plot_loss_curve(self.out / LOG_NAME, self.out / CURVE_NAME, title=title)
            if probe:
                plot_loss_curve(self.out / PROBE_LOG_NAME, self.out / PROBE_CURVE_NAME,
                                keys=("loss_seen", "loss_unseen", "loss_seen_T", "loss_unseen_T"),
                                title=f"{self.config.world}, {stage}: Eq. 2 loss, pooled vs unseen (t >= T/2; _T: "
                                      "t = T - 1)")
            (self.out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        return summary

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` (via a temporary folder), then point ``latest.json`` at it."""
        root = self.out / CHECKPOINT_DIR
        final = root / checkpoint_name(self.step)
        tmp = root / (final.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_part(tmp, "denoiser", self.denoiser, self.model.config.to_dict())
            save_file({n: t.contiguous() for n, t in self.ema.shadow.items()}, str(tmp / "ema.safetensors"))
            _save_tensors_json(tmp, "optimizer", *flatten_optimizer_state(self.optimizer.state_dict()))
            state = {"step": self.step, "elapsed_seconds": self.elapsed_now(), "interval": self.interval,
                     "scheduler": self.scheduler.state_dict(), "config": config_to_dict(self.config),
                     "processes": self.world_size, "fresh_first_write": self.first_write}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
        self.accelerator.wait_for_everyone()
        _save_tensors_json(tmp, f"rng_{self.rank}", *rng_state())
        self.accelerator.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = root / LATEST_NAME
            (root / (LATEST_NAME + ".tmp")).write_text(json.dumps({"folder": final.name, "step": self.step}) + "\n")
            os.replace(root / (LATEST_NAME + ".tmp"), pointer)  # atomic: a kill leaves the old or the new pointer
            for old in root.glob("step_*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = final
        return final

    def _load_checkpoint(self, folder: Path) -> None:
        state_dict, _, _ = load_part(folder, "denoiser")
        self.denoiser.load_state_dict(state_dict)
        params = dict(self.denoiser.named_parameters())
        # Checkpoints hold contiguous tensors; each goes back into its parameter's layout (channels_last kernels),
        # because a different layout runs different kernels and the resumed run would drift from the uninterrupted one.
        self.ema.shadow = {n: torch.empty_like(params[n], dtype=torch.float32).copy_(t)
                           for n, t in load_file(str(folder / "ema.safetensors")).items()}
        self.optimizer.load_state_dict(unflatten_optimizer_state(*_load_tensors_json(folder, "optimizer")))
        for p, state in self.optimizer.state.items():
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    state[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)
        trainer_state = json.loads((folder / "trainer_state.json").read_text())
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.step, self.elapsed = trainer_state["step"], trainer_state["elapsed_seconds"]
        self.clock = self.elapsed
        self.interval = {**empty_interval(), **trainer_state["interval"]}  # older runs kept no class loss
        if (folder / f"rng_{self.rank}.safetensors").is_file():
            set_rng_state(*_load_tensors_json(folder, f"rng_{self.rank}"))


def empty_interval() -> dict[str, float]:
    """The running sums of one logging interval."""
    return {"loss": 0.0, "class_loss": 0.0, "count": 0}


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def weights_sha1(module: nn.Module) -> str:
    """A hash of all parameter bytes: equal on every process iff they hold bitwise-identical weights."""
    digest = hashlib.sha1()
    for name, p in module.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows written after ``step`` (by a run killed after its last checkpoint), keeping the header."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    header, rows = lines[0], lines[1:]
    step_column = header.strip().split(",").index("step")
    kept = [row for row in rows if int(float(row.split(",")[step_column])) <= step]
    path.write_text(header + "".join(kept))


def config_to_dict(config: TrainConfig) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def train(config: TrainConfig, resume: bool | str | Path = False, command: str | None = None) -> dict:
    """Train one run; ``resume=True`` continues from ``out/checkpoints/latest.json``, a path from that checkpoint.

    Returns the run summary (also written to ``out/train_summary.json``).
    """
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(config.out_dir) if resume is True else Path(resume)
        if resume_from is None or not (resume_from / "trainer_state.json").is_file():
            where = resume_from or config.out_dir / CHECKPOINT_DIR
            raise FileNotFoundError(f"nothing to resume: no checkpoint at {where}. Start the run without --resume, "
                                    "or pass the --out of the interrupted run.")
    trainer = Trainer(config, resume_from, command)
    return trainer.run()


def resumed_config(checkpoint: Path, overrides: dict) -> TrainConfig:
    """The interrupted run's config, with the ``RESUME_OVERRIDABLE`` fields of ``overrides`` applied.

    Any other field given with a different value is an error: the resumed run would no longer match.
    """
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["config"]
    # a field newer than the checkpoint ran with its default
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    clashes = {k: (saved[k], v) for k, v in overrides.items()
               if k not in RESUME_OVERRIDABLE and k in saved and _normalise(saved[k]) != _normalise(v)}
    if clashes:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in clashes.items())
        raise ValueError(f"--resume continues the interrupted run, but these options differ from it: {details}. "
                         f"Only {', '.join(RESUME_OVERRIDABLE)} may change; start a new --out for a different run.")
    saved.update({k: v for k, v in overrides.items() if k in RESUME_OVERRIDABLE})
    return config_from_dict(TrainConfig, saved)


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch train",
                                     description="Train the Context Diffusion denoiser (paper Eq. 2) on a world.")
    add = parser.add_argument
    add("--profile", choices=list(TrainConfig.PROFILES), default=None, help="recipe (default: cpu)")
    add("--world", choices=WORLDS, default=None, help="shapes (default) or glyphs")
    add("--stage", type=int, choices=(1, 2), default=None,
        help="1: base model without query (default); 2: query adapter on a frozen stage-1 encoder")
    add("--joint", action="store_true", default=None, help="train base and adapter together from scratch")
    add("--parts", default=None, help="folder with the frozen parts (default: data/checkpoints/<world>)")
    add("--init", default=None, help="stage 2: the stage-1 model folder")
    add("--warm-start", default=None,
        help="start from the denoiser weights of this finished stage-1 or joint model folder (same architecture "
             "options; fresh optimiser, LR schedule and EMA; fresh episodes continue after the model's own)")
    add("--out", default=None, help="output folder (default: runs/<world>-stage<stage> or runs/<world>-joint)")
    add("--unet-profile", choices=sorted(UNET_PROFILES), default=None, help="UNet size (default: the profile's)")
    add("--attention-levels", type=int, nargs="+", choices=(0, 1), default=None,
        help="one 0/1 per UNet level, highest resolution first: where the transformer blocks (Eq. 3's "
             "cross-attention) run; e.g. 1 1 1 with --head-dim 16 (default: the UNet profile's, 0 1 1)")
    add("--head-dim", type=int, default=None, help="channels per attention head (default: the UNet profile's)")
    add("--prediction-type", choices=("v_prediction", "epsilon"), default=None, help="default: v_prediction")
    add("--steps", type=int, default=None, help="optimiser steps (fixes the LR schedule)")
    add("--minutes", type=float, default=None, help="wall-time budget; stops early and saves")
    add("--batch-size", type=int, default=None, help="global batch per optimiser step")
    add("--grad-accum", type=int, default=None, help="micro-steps per optimiser step")
    add("--lr", type=float, default=None)
    add("--lr-decay", choices=LR_DECAYS, default=None,
        help="after warm-up: constant (default), cosine to zero at --steps, or wsd: constant, then linear to zero "
             "over the last --decay-fraction of the budget (--steps or --minutes, whichever ends first)")
    add("--decay-fraction", type=float, default=None, help="wsd: share of the budget spent annealing (default 0.2)")
    add("--ema-decay", type=float, default=None)
    add("--min-snr-gamma", type=float, default=None,
        help="Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; 0 turns it off")
    add("--timestep-shift", type=float, default=None,
        help="draw timesteps shifted towards pure noise (SD3's time shift, e.g. 3); 1 (default) is uniform")
    add("--k", type=int, nargs="+", default=None, dest="k_choices", help="context sizes to draw from (default 1 2 3)")
    add("--combine", choices=COMBINE_MODES, default=None,
        help="merge the k context token sequences by sum (paper), mean or concat (stage 1 / joint; stage 2 keeps "
             "its --init model's)")
    add("--tokenizer", choices=TOKENIZERS, default=None,
        help="each context image's tokens: frozen (the frozen image encoder's, paper; default), latents (a "
             "trainable tokenizer over the image's latent, one token per latent position) or frozen+latents (both "
             "sequences) (stage 1 / joint; stage 2 keeps its --init model's)")
    add("--baseline", choices=("prompt-diffusion",), default=None,
        help="train the Prompt-Diffusion-style baseline (example pairs in the query adapter, text-only "
             "cross-attention; baselines/prompt_diffusion.py) instead of Context Diffusion; needs --joint")
    add("--patch-class-weight", type=float, default=None,
        help="with --tokenizer latents on shapes: add this times an auxiliary loss that makes each context token "
             "name its patch's shape class (a linear head, cross-entropy against the layout's class shares) to Eq. 2; "
             "0 (default): off")
    add("--query-invert-prob", type=float, default=None,
        help="invert each training query (1 - query) with this probability, so dark-on-light maps such as sketches "
             "are read like light-on-dark ones (invert_queries); 0 (default): off")
    add("--pool-size", type=int, default=None, help="pre-encoded training episodes")
    add("--pool-cache", default=None, help="safetensors file to keep the encoded pool between runs")
    add("--fresh-per-step", type=int, default=None,
        help="never-seen episodes written into every k group of the pool per step (default 0: a fixed pool)")
    add("--probe-every", type=int, default=None,
        help="steps between memorisation probes, pooled vs unseen episodes, in probe_log.csv (0: none)")
    add("--log-every", type=int, default=None)
    add("--checkpoint-every", type=int, default=None)
    add("--save-dtype", choices=("float32", "float16"), default=None, help="dtype of the final model files")
    add("--mixed-precision", choices=("auto", "no", "bf16"), default=None)
    add("--seed", type=int, default=None)
    add("--threads", type=int, default=None, help="torch threads per process")
    add("--resume", nargs="?", const=True, default=False,
        help="continue the run in --out from its latest checkpoint (or from the checkpoint folder given)")
    return parser


def checkpoint_to_resume(resume: bool | str, out_dir: Path, required_file: str | None = None) -> Path:
    """``--resume``'s checkpoint folder: the latest in ``out_dir`` (``resume`` True) or the folder given; SystemExit
    with a hint when there is none (or it lacks ``required_file``)."""
    checkpoint = latest_checkpoint(out_dir) if resume is True else Path(resume)
    if checkpoint is None or (required_file is not None and not (checkpoint / required_file).is_file()):
        where = checkpoint or Path(out_dir) / CHECKPOINT_DIR / LATEST_NAME
        raise SystemExit(f"nothing to resume: no checkpoint in {where}. Start the run without --resume.")
    return checkpoint


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    resume = args.pop("resume")
    overrides = {k: v for k, v in args.items() if v is not None}
    config = TrainConfig.from_profile(overrides.get("profile", "cpu"),
                                      **{k: v for k, v in overrides.items() if k != "profile"})
    if resume:
        checkpoint = checkpoint_to_resume(resume, config.out_dir)
        config = resumed_config(checkpoint, overrides)
        resume = checkpoint
    command = "python -m ctxdiff_from_scratch train " + shlex.join(argv)
    summary = train(config, resume=resume, command=command)
    if summary.get("final_loss") is not None:
        print(f"trained {summary['steps']} steps at {summary['images_per_second']} img/s; final loss "
              f"{summary['final_loss']}; model in {config.out_dir}")
    return summary


if __name__ == "__main__":
    main()

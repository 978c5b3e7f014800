"""Train a world's CLIP-style context encoders, evaluate them by retrieval, and write them as a checkpoint folder.

    python -m ctxdiff_from_scratch encoders --world shapes   # image <-> prompt and style sibling, ~4.5 min on 2 cores
    python -m ctxdiff_from_scratch encoders --world glyphs   # 4 glyphs of a font <-> 4 others, ~4-7 min
    python -m ctxdiff_from_scratch encoders --world shapes --eval-only  # re-measure the shipped checkpoint

Training writes to ``runs/parts-<world>`` unless ``--out`` says otherwise, so the shipped models (whose denoiser was
trained on exactly these encoders) are never overwritten by accident.

The objective is CLIP's symmetric InfoNCE (:func:`ctxdiff_from_scratch.encoders.clip_loss`) with a learnable
temperature. The positives differ per world:

* ShapesWorld: a styled image and its style prompt (``ShapesWorld.styled_image``). Pairs are drawn fresh every step
  (painting costs well under a millisecond), so the encoders never see the same pair twice. With ``--binding-twins``
  half of each batch are *binding twins* of the other half (``ShapesWorld.styled_twins``): the same layout and the
  same words with the colours bound to other shapes. Random negatives can be told apart by their bag of colours
  alone; a twin only by which colour goes with which shape, which is what the diffusion model must read off its
  context. (Off by default: it helps the encoders, not the denoiser; see ``EncoderTrainConfig.binding_twins``.)
  With ``style_pairs`` (the ShapesWorld default) each image also meets its *style sibling*, the same style painted on
  another layout (``ShapesWorld.styled_siblings``), in a second InfoNCE term. A prompt names the background's pattern
  and colour but not the angle of its stripes, so image <-> prompt alone never asks the encoder to keep it; a context
  image and its episode's target share it, and the diffusion model must copy it.
  With ``patch_class_weight`` > 0 each of the image encoder's patch tokens must also say what its patch shows: a
  linear head (trained with the encoders, not saved) reads the class distribution of the patch's pixels (each shape
  class or background; the layouts label every pixel) off the token, cross-entropy against the true shares. A pooled
  contrastive loss lets the patch tokens forget *where* each shape is; the denoiser's cross-attention (Eq. 3) must
  find, for a shape in the query, the context patches of the same class and copy their colour, which it can only do
  if a token names its patch's class (docs/experiments.md, sections 19 and 21). Measured: the tokens then carry
  more of each patch's class and colour, but the denoiser bound no better with them (section 22), so it is off by
  default.
* GlyphWorld has no prompts: the two views of a font are two *disjoint sets* of its glyphs. Each glyph goes through
  the image encoder on its own (it will see single glyphs as context images later) and a set's embedding is the
  mean of its glyphs' normalised embeddings (:func:`encode_glyph_sets`). All glyphs of the training fonts are
  rendered once, up front, into a uint8 bank.

Evaluation (:func:`evaluate_shapes`, :func:`evaluate_glyphs`) is top-1 retrieval among 64 candidates on the test
split (GlyphWorld's test split may hold fewer fonts; then all of them are candidates); the CLI, the model cards, the
tests and notebook 04 all call these functions.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import WORLDS
from .data.shapes import NUM_PATCH_CLASSES, patch_class_cross_entropy, patch_class_shares
from .device import get_device, seed_everything
from .encoders import (ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig, clip_loss, config_summary,
                       retrieval_top1)
from .runlog import CSVLogger, plot_loss_curve, read_log
from .tokenizer import WordTokenizer

LOG_NAME, CURVE_NAME, CARD_NAME = "encoders_log.csv", "encoders_loss.png", "encoders_card.md"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps 1/temperature at 100 so the logits cannot blow up


@dataclass
class EncoderTrainConfig:
    """How to train the encoders of one world. ``EncoderTrainConfig.for_world("glyphs", steps=100)``.

    batch_size: (image, prompt) pairs per step for shapes; *fonts* per step for glyphs (each gives 2 sets of
    ``glyphs_per_set`` glyphs, so a glyph step encodes batch_size * 2 * glyphs_per_set images).
    """

    world: str = "shapes"
    profile: str = "cpu"          # encoder sizes: ImageEncoderConfig / TextEncoderConfig profile
    image_size: int = 64
    steps: int = 400
    batch_size: int = 128
    glyphs_per_set: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    init_temperature: float = 0.07
    max_length: int = 32          # tokenizer length; the longest ShapesWorld prompt is 30 tokens with <bos>/<eos>
    tokenizer_prompts: int = 5000  # training prompts the vocabulary is fitted on
    eval_candidates: int = 64
    eval_rounds: int = 4
    log_every: int = 10
    seed: int = 0
    # shapes: half of each batch are binding twins of the other half (ShapesWorld.styled_twins). Off by default: it
    # raises the encoders' binding probes (benchmarks/encoder_binding.py) but gave the denoiser no more context gain
    # (docs/experiments.md, section 3).
    binding_twins: bool = False
    # shapes: add the image <-> style-sibling InfoNCE term (see the module docstring). None: on for shapes unless
    # binding_twins is on (the two are alternatives), off for glyphs.
    style_pairs: bool | None = None
    # shapes: weight of the per-patch class loss on the image tokens (see the module docstring; 0: off)
    patch_class_weight: float = 0.0

    WORLD_DEFAULTS: ClassVar[dict[str, dict]] = {"shapes": {}, "glyphs": dict(steps=250, batch_size=32)}
    PROFILES: ClassVar[dict[str, dict]] = {
        "cpu": {},
        # a few seconds: for tests and the notebook's demo, not for use
        "tiny": dict(image_size=16, steps=4, batch_size=8, glyphs_per_set=2, warmup_steps=1, tokenizer_prompts=200,
                     eval_candidates=8, eval_rounds=1, log_every=1),
    }

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"world={self.world!r} is not one of {WORLDS}: encoders are trained on ShapesWorld "
                             "(image <-> prompt) or GlyphWorld (font <-> font).")
        if self.profile not in self.PROFILES:
            raise ValueError(f"profile={self.profile!r} is not one of {list(self.PROFILES)}.")
        for name in ("image_size", "steps", "batch_size", "glyphs_per_set", "max_length", "tokenizer_prompts",
                     "eval_candidates", "eval_rounds", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"EncoderTrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.batch_size < 2:
            raise ValueError("a contrastive batch needs at least 2 pairs (the others are the negatives); "
                             f"got batch_size={self.batch_size}.")
        if self.style_pairs is None:
            self.style_pairs = self.world == "shapes" and not self.binding_twins
        if self.style_pairs and (self.world != "shapes" or self.binding_twins):
            raise ValueError(f"style_pairs pairs every ShapesWorld image with another image of its style; it needs "
                             f"world='shapes' and binding_twins off, got world={self.world!r}, "
                             f"binding_twins={self.binding_twins}.")
        if self.binding_twins and (self.world != "shapes" or self.batch_size % 2):
            raise ValueError(f"binding_twins pairs every ShapesWorld image with its twin, so it needs world='shapes' "
                             f"and an even batch_size; got world={self.world!r}, batch_size={self.batch_size}.")
        if self.patch_class_weight < 0 or (self.patch_class_weight and not self.style_pairs):
            raise ValueError(f"patch_class_weight={self.patch_class_weight} must be >= 0, and > 0 only with "
                             "style_pairs on (ShapesWorld, whose layouts label every pixel with its class).")
        if not (self.lr > 0 and 0 < self.init_temperature <= 1 and self.warmup_steps >= 0):
            raise ValueError(f"need lr > 0, 0 < init_temperature <= 1 and warmup_steps >= 0; got lr={self.lr}, "
                             f"init_temperature={self.init_temperature}, warmup_steps={self.warmup_steps}.")

    @classmethod
    def for_world(cls, world: str, profile: str = "cpu", **overrides) -> "EncoderTrainConfig":
        """The defaults of ``world`` at ``profile`` ("cpu" or "tiny"), with ``overrides`` on top."""
        if world not in WORLDS:
            raise ValueError(f"world={world!r} is not one of {WORLDS}.")
        if profile not in cls.PROFILES:
            raise ValueError(f"profile={profile!r} is not one of {list(cls.PROFILES)}.")
        return cls(**{**cls.WORLD_DEFAULTS[world], **cls.PROFILES[profile], "world": world, "profile": profile,
                      **overrides})


class ContrastivePair(nn.Module):
    """What is trained together: the image encoder, the text encoder (shapes only), the learnable temperature and,
    with ``patch_classes``, the linear head that reads each patch token's class shares (not saved with the encoder)."""

    def __init__(self, image_encoder: ImageEncoder, text_encoder: TextEncoder | None, init_temperature: float,
                 patch_classes: int = 0):
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        # s = log(1 / tau), learned (CLIP); tau = 0.07 at the start
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.patch_head = nn.Linear(image_encoder.config.dim, patch_classes) if patch_classes else None

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE)

    def image_text_loss(self, images: torch.Tensor, tokens: dict[str, torch.Tensor],
                        siblings: torch.Tensor | None = None,
                        patch_shares: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """InfoNCE between images (B, 3, H, W) and their tokenized prompts, plus InfoNCE between the images and their
        style ``siblings`` (B, 3, H, W) when given. ``patch_shares`` (B or 2B, g*g, C), the class shares of every
        patch of the images (then the siblings), gives the per-patch class loss. Returns (contrastive loss, patch
        class loss (0 without shares), in-batch image -> prompt top-1)."""
        batch = images if siblings is None else torch.cat([images, siblings])  # (B or 2B, 3, H, W)
        encoded = self.image_encoder(batch)
        embeddings = encoded.pooled  # (B or 2B, E)
        image_emb = embeddings[:len(images)]
        text_emb = self.text_encoder(tokens["input_ids"], tokens["attention_mask"]).pooled
        loss = clip_loss(image_emb, text_emb, self.scale())
        if siblings is not None:
            loss = loss + clip_loss(image_emb, embeddings[len(images):], self.scale())
        patch_loss = torch.zeros((), device=images.device)
        if patch_shares is not None:
            patch_loss = self.patch_class_loss(encoded.tokens, patch_shares)
        return loss, patch_loss, retrieval_top1(image_emb, text_emb)

    def patch_class_loss(self, patch_tokens: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the head's class distribution per token (N, g*g, D) against the patch's true class
        shares (N, g*g, C): -sum_c share_c log p_c, averaged over the patches (its minimum is the shares' entropy)."""
        return patch_class_cross_entropy(self.patch_head(patch_tokens), shares)  # (N, g*g, D) -> (N, g*g, C)

    def glyph_set_loss(self, sets_a: torch.Tensor, sets_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE between two glyph sets (B, m, 3, H, W) per font (one font per row); returns (loss, top-1)."""
        emb_a, emb_b = encode_glyph_sets(self.image_encoder, sets_a), encode_glyph_sets(self.image_encoder, sets_b)
        return clip_loss(emb_a, emb_b, self.scale()), retrieval_top1(emb_a, emb_b)


def encode_glyph_sets(image_encoder: ImageEncoder, sets: torch.Tensor) -> torch.Tensor:
    """A font's embedding from a set of its glyphs: e(S) = mean_{g in S} f(g) / |f(g)|.

    sets: (B, m, 3, H, W) -> (B, E). Each glyph is encoded on its own, then the normalised embeddings are averaged.
    """
    B, m = sets.shape[:2]
    pooled = image_encoder(sets.flatten(0, 1)).pooled  # (B, m, 3, H, W) -> (B*m, 3, H, W) -> (B*m, E)
    return F.normalize(pooled, dim=-1).view(B, m, -1).mean(1)  # (B*m, E) -> (B, m, E) -> (B, E)


def learning_rate(step: int, config: EncoderTrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    # lr_t = lr / 2 (1 + cos(pi * progress))
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


# --- data ------------------------------------------------------------------------------------------------------------
def _shapes_world(split: str, size: int):
    from .data.shapes import ShapesWorld  # the worlds are imported lazily: the encoders do not need them

    return ShapesWorld(split=split, size=size)


def _glyph_world(split: str, size: int):
    from .data.glyphs import GlyphWorld

    return GlyphWorld(split=split, size=size)


def styled_pairs(world, seeds) -> tuple[torch.Tensor, list[str]]:
    """Images (N, 3, H, W) and prompts for ``seeds`` of a ShapesWorld (``styled_image``)."""
    images, prompts = zip(*(world.styled_image(int(seed)) for seed in seeds))
    return torch.stack(images), list(prompts)  # N x (3, H, W) -> (N, 3, H, W)


def twin_pairs(world, seeds) -> tuple[torch.Tensor, list[str]]:
    """Images (2N, 3, H, W) and prompts for ``seeds`` of a ShapesWorld, each image next to its binding twin
    (``styled_twins``): same layout and words, colours bound to other shapes. In one InfoNCE batch each twin is
    the other's hardest negative, in both directions."""
    images, prompts = zip(*(world.styled_twins(int(seed)) for seed in seeds))
    return torch.cat(images), [p for pair in prompts for p in pair]  # N x (2, 3, H, W) -> (2N, 3, H, W)


def sibling_pairs(world, seeds) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """Images (N, 3, H, W), their style siblings (N, 3, H, W), prompts and the class maps of the images then the
    siblings (2N, H, W) int, as the encoder sees them, for ``seeds`` of a ShapesWorld (``labelled_siblings``)."""
    pairs, prompts, classes = zip(*(world.labelled_siblings(int(seed)) for seed in seeds))
    both = torch.stack(pairs)  # N x (2, 3, H, W) -> (N, 2, 3, H, W)
    maps = torch.from_numpy(np.stack(classes))  # N x (2, H, W) -> (N, 2, H, W)
    return both[:, 0], both[:, 1], list(prompts), torch.cat([maps[:, 0], maps[:, 1]])  # -> (2N, H, W)


def fit_tokenizer(world, n_prompts: int, max_length: int) -> WordTokenizer:
    """A word tokenizer fitted on the prompts of the first ``n_prompts`` styled images of ``world``."""
    return WordTokenizer.fit((world.styled_image(seed)[1] for seed in range(n_prompts)), max_length=max_length)


def glyph_bank(world, desc: str = "rendering glyphs") -> torch.Tensor:
    """Every glyph of every font of a GlyphWorld as uint8: (num_fonts, len(charset), 3, H, W)."""
    fonts = []
    for font in tqdm(range(world.num_fonts), desc=desc):
        glyphs = torch.stack([world.render(font, char) for char in world.charset])  # C x (3, H, W) -> (C, 3, H, W)
        fonts.append((glyphs * 255).round().to(torch.uint8))
    return torch.stack(fonts)  # F x (C, 3, H, W) -> (F, C, 3, H, W)


def sample_glyph_sets(bank: torch.Tensor, n_fonts: int, glyphs_per_set: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick ``n_fonts`` distinct fonts and, per font, two disjoint random sets of glyphs.

    Returns (font indices (B,), sets_a, sets_b), the sets float (B, m, 3, H, W) in [0, 1].
    """
    num_fonts, num_chars = bank.shape[:2]
    if n_fonts > num_fonts or 2 * glyphs_per_set > num_chars:
        raise ValueError(f"cannot draw {n_fonts} fonts x 2 x {glyphs_per_set} glyphs from {num_fonts} fonts of "
                         f"{num_chars} characters; lower the batch size or glyphs_per_set.")
    fonts = torch.randperm(num_fonts, generator=generator)[:n_fonts]
    chars = torch.rand(n_fonts, num_chars, generator=generator).argsort(1)[:, : 2 * glyphs_per_set]  # (B, 2m)
    sets = bank[fonts[:, None], chars].float() / 255  # (F, C, 3, H, W)[(B, 1), (B, 2m)] -> (B, 2m, 3, H, W)
    return fonts, sets[:, :glyphs_per_set], sets[:, glyphs_per_set:]


# --- evaluation ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_shapes(image_encoder: ImageEncoder, text_encoder: TextEncoder, tokenizer: WordTokenizer,
                    split: str = "test", candidates: int = 64, rounds: int = 4, seed: int = 0,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Image -> prompt top-1 retrieval among ``candidates`` *distinct* prompts, averaged over ``rounds``.

    Each round walks the split's styled images from seed ``seed`` on and keeps an image only if its prompt is not
    yet in the round, so exactly one candidate is correct (no ties between identical prompts). Returns
    ``image_to_text`` and ``text_to_image`` top-1, ``image_to_style`` (the image must find its style sibling, the
    same style on another layout, among the round's siblings: the match a context image and its target make),
    ``chance`` (1 / candidates) and ``queries``.
    """
    world = _shapes_world(split, image_encoder.config.image_size)
    image_encoder.eval(), text_encoder.eval()
    next_seed, i2t, t2i, i2s = seed, [], [], []
    for _ in range(rounds):
        pairs, prompts = [], []
        while len(prompts) < candidates:
            pair, prompt = world.styled_siblings(next_seed)  # pair[0] is styled_image(next_seed)'s image
            next_seed += 1
            if prompt not in prompts:
                pairs.append(pair)
                prompts.append(prompt)
        both = torch.stack(pairs).to(device)  # candidates x (2, 3, H, W) -> (candidates, 2, 3, H, W)
        image_emb = image_encoder(both[:, 0]).pooled  # (candidates, 3, H, W) -> (candidates, E)
        sibling_emb = image_encoder(both[:, 1]).pooled
        tokens = {k: v.to(device) for k, v in tokenizer(prompts).items()}
        text_emb = text_encoder(tokens["input_ids"], tokens["attention_mask"]).pooled
        i2t.append(retrieval_top1(image_emb, text_emb).item())
        t2i.append(retrieval_top1(text_emb, image_emb).item())
        i2s.append(retrieval_top1(image_emb, sibling_emb).item())
    return {"image_to_text": sum(i2t) / rounds, "text_to_image": sum(t2i) / rounds, "image_to_style": sum(i2s) / rounds,
            "candidates": candidates, "chance": 1 / candidates, "queries": rounds * candidates}


@torch.no_grad()
def evaluate_glyphs(image_encoder: ImageEncoder, split: str = "test", candidates: int = 64, rounds: int = 4,
                    glyphs_per_set: int = 4, seed: int = 0, bank: torch.Tensor | None = None,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Same-font top-1 retrieval: a set of a font's glyphs must find a disjoint set of the same font among
    ``candidates`` fonts of the split (all fonts differ, so exactly one candidate is correct). A split with fewer
    fonts uses them all as candidates; the returned ``candidates`` and ``chance`` say how many.

    Each round draws ``candidates`` fonts and two disjoint glyph sets per font from a generator seeded by ``seed``.
    ``bank`` (from :func:`glyph_bank`) skips re-rendering. Returns ``top1`` (set A -> set B), ``top1_reverse``,
    ``chance`` and ``queries``.
    """
    if bank is None:
        bank = glyph_bank(_glyph_world(split, image_encoder.config.image_size), desc=f"rendering {split} glyphs")
    candidates = min(candidates, bank.shape[0])  # the Debian test split holds about 40 fonts
    image_encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    forward, reverse = [], []
    for _ in range(rounds):
        _, sets_a, sets_b = sample_glyph_sets(bank, candidates, glyphs_per_set, generator)
        emb_a = encode_glyph_sets(image_encoder, sets_a.to(device))
        emb_b = encode_glyph_sets(image_encoder, sets_b.to(device))
        forward.append(retrieval_top1(emb_a, emb_b).item())
        reverse.append(retrieval_top1(emb_b, emb_a).item())
    return {"top1": sum(forward) / rounds, "top1_reverse": sum(reverse) / rounds, "candidates": candidates,
            "chance": 1 / candidates, "queries": rounds * candidates}


def evaluate_encoders(world: str, image_encoder: ImageEncoder, text_encoder: TextEncoder | None = None,
                      tokenizer: WordTokenizer | None = None, split: str = "test", candidates: int = 64,
                      rounds: int = 4, glyphs_per_set: int = 4, bank: torch.Tensor | None = None,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """The retrieval evaluation of ``world``: :func:`evaluate_shapes` or :func:`evaluate_glyphs`."""
    if world == "shapes":
        return evaluate_shapes(image_encoder, text_encoder, tokenizer, split, candidates, rounds, device=device)
    return evaluate_glyphs(image_encoder, split, candidates, rounds, glyphs_per_set, bank=bank, device=device)


def evaluate_folder(folder: str | Path, world: str, split: str = "test", candidates: int = 64, rounds: int = 4,
                    glyphs_per_set: int = 4, bank: torch.Tensor | None = None,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Load the encoders saved in ``folder`` and run the retrieval evaluation of ``world`` on ``split``."""
    image_encoder = ImageEncoder.from_pretrained(folder).to(device)
    text_encoder, tokenizer = None, None
    if world == "shapes":
        text_encoder = TextEncoder.from_pretrained(folder).to(device)
        tokenizer = WordTokenizer.load(Path(folder) / "tokenizer.json")
    return evaluate_encoders(world, image_encoder, text_encoder, tokenizer, split, candidates, rounds,
                             glyphs_per_set, bank, device)


# --- training --------------------------------------------------------------------------------------------------------
def train_encoders(config: EncoderTrainConfig, out_dir: str | Path, device: torch.device | str | None = None,
                   command: str = "(called from Python)") -> dict:
    """Train the encoders of ``config.world``, save them (fp16) to ``out_dir`` with the CSV log, the loss curve and
    a model card, then evaluate the *saved* weights on the test split. Returns a summary dict."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    device = get_device() if device is None else torch.device(device)
    generator = seed_everything(config.seed)
    image_config = ImageEncoderConfig.profile(config.profile, image_size=config.image_size)
    tokenizer, text_encoder, bank = None, None, None
    if config.world == "shapes":
        world = _shapes_world("train", config.image_size)
        tokenizer = fit_tokenizer(world, config.tokenizer_prompts, config.max_length)
        text_encoder = TextEncoder(TextEncoderConfig.profile(config.profile, vocab_size=tokenizer.vocab_size,
                                                             max_length=tokenizer.max_length))
    else:
        bank = glyph_bank(_glyph_world("train", config.image_size), desc="rendering train glyphs")
    patch_classes = NUM_PATCH_CLASSES if config.patch_class_weight else 0
    model = ContrastivePair(ImageEncoder(image_config), text_encoder, config.init_temperature,
                            patch_classes).to(device)
    test_bank = None if config.world == "shapes" else glyph_bank(_glyph_world("test", config.image_size),
                                                                  desc="rendering test glyphs")
    evaluation = dict(split="test", candidates=config.eval_candidates, rounds=config.eval_rounds,
                      glyphs_per_set=config.glyphs_per_set, bank=test_bank, device=device)
    # what an untrained encoder of the same shape scores: the floor that training must beat
    untrained = evaluate_encoders(config.world, model.image_encoder, text_encoder, tokenizer, **evaluation)
    # weight decay on matrices only: decaying biases, norms and the temperature s would pull them towards 0
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                                   {"params": others, "weight_decay": 0.0}], lr=config.lr)
    logger = CSVLogger(out_dir / LOG_NAME)

    model.train()
    bar = tqdm(range(config.steps), desc=f"encoders ({config.world})")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        if config.world == "shapes":
            seeds, siblings, shares = range(step * config.batch_size, (step + 1) * config.batch_size), None, None
            if config.style_pairs:  # batch_size fresh styles per step, each painted on two layouts
                images, siblings, prompts, class_maps = sibling_pairs(world, seeds)
                siblings = siblings.to(device)
                if config.patch_class_weight:
                    shares = patch_class_shares(class_maps, image_config.grid).to(device)
            elif config.binding_twins:  # batch_size / 2 fresh layouts per step, each painted twice
                half = config.batch_size // 2
                images, prompts = twin_pairs(world, range(step * half, (step + 1) * half))
            else:  # batch_size fresh pairs per step
                images, prompts = styled_pairs(world, seeds)
            tokens = {k: v.to(device) for k, v in tokenizer(prompts).items()}
            contrastive, patch_loss, top1 = model.image_text_loss(images.to(device), tokens, siblings, shares)
            loss = contrastive + config.patch_class_weight * patch_loss
        else:
            _, sets_a, sets_b = sample_glyph_sets(bank, min(config.batch_size, bank.shape[0]),
                                                  config.glyphs_per_set, generator)
            loss, top1 = model.glyph_set_loss(sets_a.to(device), sets_b.to(device))
            patch_loss = torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            temperature = 1 / model.scale().exp().item()
            logger.log(step=step, loss=loss.item(), patch_class_loss=patch_loss.item(), batch_top1=top1.item(),
                       temperature=temperature, lr=optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.3f}", top1=f"{top1.item():.2f}")
    train_seconds = time.perf_counter() - start

    temperature = 1 / model.scale().exp().item()
    metadata = {"world": config.world, "temperature": temperature, "train_config": asdict(config)}
    model.image_encoder.save_pretrained(out_dir, metadata=metadata, dtype=torch.float16)
    if tokenizer is not None:
        tokenizer.save(out_dir / "tokenizer.json")
        model.text_encoder.save_pretrained(out_dir, metadata=metadata, dtype=torch.float16)
    plot_loss_curve(out_dir / LOG_NAME, out_dir / CURVE_NAME, keys=("loss",),
                    title=f"{config.world}: contrastive (InfoNCE) loss")
    metrics = evaluate_folder(out_dir, config.world, **evaluation)
    summary = {"world": config.world, "command": command, "train_seconds": train_seconds,
               "total_seconds": time.perf_counter() - start, "final_loss": _final_loss(out_dir / LOG_NAME),
               "temperature": temperature, "test": metrics, "untrained": untrained, "machine": machine_description(),
               "image_config": config_summary(image_config),
               "image_params": sum(p.numel() for p in model.image_encoder.parameters()),
               "text_config": config_summary(model.text_encoder.config) if text_encoder is not None else None,
               "text_params": sum(p.numel() for p in text_encoder.parameters()) if text_encoder is not None else 0,
               "train_config": asdict(config)}
    write_card(out_dir / CARD_NAME, summary)
    return summary


def _final_loss(log_path: Path, last: int = 5) -> float:
    """Mean of the last ``last`` logged losses: one step's loss is noisy."""
    losses = read_log(log_path)["loss"][-last:]
    return sum(losses) / len(losses)


def machine_description() -> str:
    """CPU, threads and how busy the machine was: a shared CPU makes a wall time longer than it would be alone."""
    busy = f", load average {os.getloadavg()[1]:.1f} over the last 5 min" if hasattr(os, "getloadavg") else ""
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores{busy}, {torch.get_num_threads()} "
            f"torch threads, torch {torch.__version__}")


def metric_text(world: str, metrics: dict, glyphs_per_set: int = 4) -> str:
    """One line of retrieval results, for cards and printouts."""
    if world == "shapes":
        return ("image -> prompt top-1 retrieval among {n} distinct test-split prompts: **{a:.3f}** "
                "(prompt -> image {b:.3f}; image -> same style on another layout {s:.3f}; chance {c:.3f}; "
                "{q} queries)").format(
            n=metrics["candidates"], a=metrics["image_to_text"], b=metrics["text_to_image"],
            s=metrics["image_to_style"], c=metrics["chance"], q=metrics["queries"])
    return ("same-font top-1 retrieval among {n} held-out test fonts, a set of {m} glyphs against a disjoint set of "
            "{m}: **{a:.3f}** (reverse {b:.3f}; chance {c:.3f}; {q} queries)").format(
        n=metrics["candidates"], m=glyphs_per_set, a=metrics["top1"], b=metrics["top1_reverse"],
        c=metrics["chance"], q=metrics["queries"])


def write_card(path: Path, summary: dict) -> Path:
    """The model card: how the checkpoint was made and what it scores."""
    world, glyphs_per_set = summary["world"], summary["train_config"]["glyphs_per_set"]
    if world == "shapes":
        files = "`tokenizer.json`, `text_encoder.{safetensors,json}`, `image_encoder.{safetensors,json}`"
        positives = "a styled image and its style prompt (`ShapesWorld.styled_image`), fresh pairs every step"
        if summary["train_config"]["binding_twins"]:
            positives += ("; half of each batch are binding twins of the other half (`ShapesWorld.styled_twins`: "
                          "the same layout and words with colours bound to other shapes), each the other's hardest "
                          "negative")
        if summary["train_config"]["style_pairs"]:
            positives += ("; each image also meets its style sibling, the same style painted on another layout "
                          "(`ShapesWorld.styled_siblings`), in a second InfoNCE term")
        if summary["train_config"]["patch_class_weight"]:
            positives += (f"; plus {summary['train_config']['patch_class_weight']} x a per-patch class loss (a "
                          "linear head, not saved, reads each image token's patch class shares from the layouts)")
    else:
        files = "`image_encoder.{safetensors,json}` (no prompts in this world, so no text encoder)"
        positives = ("two disjoint glyph sets of the same font; each glyph encoded alone, a set's embedding is the "
                     "mean of its glyphs' normalised embeddings")
    lines = [
        f"# Context encoders: {world}",
        "",
        "CLIP-style encoders trained from scratch with symmetric InfoNCE and a learnable temperature "
        "(`ctxdiff_from_scratch/train_encoders.py`), frozen afterwards as in the paper.",
        "",
        f"- Command: `{summary['command']}`",
        f"- Positives: {positives}",
        f"- Wall time: {summary['train_seconds'] / 60:.1f} min training (data included), "
        f"{summary['total_seconds'] / 60:.1f} min with saving and evaluation",
        f"- Machine: {summary['machine']}",
        f"- Final training loss (mean of the last 5 logged steps): {summary['final_loss']:.4f}; "
        f"learned temperature {summary['temperature']:.4f}",
        f"- Test metric (the saved fp16 weights, reloaded): {metric_text(world, summary['test'], glyphs_per_set)}",
        f"- Untrained baseline (same architecture, random initialisation, same evaluation): "
        f"{metric_text(world, summary['untrained'], glyphs_per_set)}",
        f"- Image encoder ({summary['image_params']:,} parameters): {summary['image_config']}",
    ]
    if summary["text_config"] is not None:
        lines.append(f"- Text encoder ({summary['text_params']:,} parameters): {summary['text_config']}")
    lines += [
        f"- Training config: {summary['train_config']}",
        f"- Files: {files}, `{LOG_NAME}` (loss per logged step), `{CURVE_NAME}` (its plot)",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch encoders",
                                     description="Train (or, with --eval-only, evaluate) the CLIP-style context "
                                                 "encoders of a world and write them to a checkpoint folder.")
    parser.add_argument("--world", choices=WORLDS, required=True)
    parser.add_argument("--out", help="checkpoint folder (default: runs/parts-<world> when training, so the shipped "
                                      "models are never overwritten; data/checkpoints/<world> with --eval-only)")
    parser.add_argument("--profile", choices=list(EncoderTrainConfig.PROFILES), default="cpu",
                        help="cpu: the shipped setting; tiny: a seconds-long smoke run (default: cpu)")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the profile's)")
    parser.add_argument("--batch-size", type=int, help="pairs (shapes) or fonts (glyphs) per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--device", help="cpu, cuda or mps (default: best available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 can be faster "
                                                    "when other programs share the CPU)")
    parser.add_argument("--binding-twins", action="store_true", default=None,
                        help="shapes: pair every image in a batch with its binding twin (the hard negative that paints "
                             "the same layout with colours bound to other shapes); off by default, see the model card")
    parser.add_argument("--style-pairs", action=argparse.BooleanOptionalAction, default=None,
                        help="shapes: add InfoNCE between each image and the same style on another layout "
                             "(default: on for shapes, unless --binding-twins)")
    parser.add_argument("--patch-class-weight", type=float,
                        help="shapes: weight of the loss that makes each patch token name the classes its patch shows "
                             "(default: 0, off)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the encoders in --out, do not train")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out or (f"data/checkpoints/{args.world}" if args.eval_only else f"runs/parts-{args.world}"))
    device = get_device(args.device)
    if args.eval_only:
        config = EncoderTrainConfig.for_world(args.world, args.profile)
        metrics = evaluate_folder(out, args.world, "test", candidates=config.eval_candidates,
                                  rounds=config.eval_rounds, glyphs_per_set=config.glyphs_per_set, device=device)
        print({k: round(v, 4) for k, v in metrics.items()})
        return metrics
    overrides = {name: value for name, value in (("steps", args.steps), ("batch_size", args.batch_size),
                                                 ("lr", args.lr), ("seed", args.seed),
                                                 ("binding_twins", args.binding_twins),
                                                 ("style_pairs", args.style_pairs),
                                                 ("patch_class_weight", args.patch_class_weight)) if value is not None}
    config = EncoderTrainConfig.for_world(args.world, args.profile, **overrides)
    command = " ".join(["python -m ctxdiff_from_scratch encoders", *(sys.argv[1:] if argv is None else argv)])
    summary = train_encoders(config, out, device, command=command)
    print(f"wrote {out}: final loss {summary['final_loss']:.4f}, test {summary['test']}, "
          f"{summary['total_seconds'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    main()

"""Train the tiny autoencoder of a world, evaluate it on the world's test split, and ship it with a model card.

    python -m ctxdiff_from_scratch autoencoder --world shapes --out data/checkpoints/shapes --threads 2
    python -m ctxdiff_from_scratch.train_autoencoder --world glyphs --out data/checkpoints/glyphs --minutes 5

The images come from the world's *train* split episodes (queries, contexts and targets: everything the diffusion model
will later encode or generate, so ShapesWorld's styled images and its edge/seg/depth maps alike). Episodes are drawn
once into a fixed uint8 pool in memory (cheaper than re-drawing them every step, and the same for every run with the
same seed), then the model trains on random batches of that pool.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .autoencoder import Autoencoder, AutoencoderConfig, AUTOENCODER_PROFILES, estimate_scale_factor, \
    with_scale_factor
from .data import WORLDS, make_world
from .device import get_device, seed_everything
from .evaluate import glyph_iou, per_image_mse
from .runlog import CSVLogger, plot_loss_curve

# Map kinds whose foreground is thin bright strokes on black: scored by edge-pixel F1.
STROKE_KINDS = ("edge", "canny", "scribble")
# Dark ink on white: scored by glyph IoU. GlyphWorld's only task is font2font, so its target kind is "font".
INK_KINDS = ("font",)
RECONSTRUCTION_LOSSES = ("l1", "l2")
# Extra loss weight on stroke pixels, per world: thin strokes are a few pixels among flat background and fade without
# it. Under the L2 loss, 4 keeps ShapesWorld's edges, and a heavier weight costs PSNR on its styled images and maps;
# glyph outlines want 32. Screens: docs/autoencoders.md.
EDGE_WEIGHTS = {"shapes": 4.0, "glyphs": 32.0}


@dataclass
class TrainConfig:
    """One training run. ``steps`` fixes the learning-rate schedule (so a seed gives the same model every time);
    ``minutes`` is only a safety cap that stops early and saves what there is."""

    world: str = "shapes"
    profile: str = "cpu"
    steps: int = 9000
    minutes: float | None = None
    # Small batches: at a fixed number of images seen, more (noisier) updates reached lower losses in our runs.
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 100
    kl_weight: float = 1e-5
    # None: the world's own weight, EDGE_WEIGHTS[world].
    edge_weight: float | None = None
    # "l2" or "l1" (LDM's choice): the squared error punishes a half-grey pixel on a 1-pixel stroke far more than
    # many small errors on flat areas, and that keeps thin strokes across the 0.5 threshold that edge F1 and glyph IoU
    # use (docs/autoencoders.md, "The L2 recipe").
    loss: str = "l2"
    # A second phase after the main one (0 steps = none): the decoder alone learns to decode *noisy* latents, so it
    # forgives the denoiser's mistakes (see finetune_decoder). Noise std up to decoder_noise, in scaled-latent units.
    decoder_steps: int = 0
    decoder_noise: float = 0.5
    decoder_lr: float = 5e-4
    pool_size: int = 12000
    seed: int = 0
    eval_images: int = 256
    log_every: int = 25
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"unknown world {self.world!r}; choose one of {WORLDS}.")
        if self.profile not in AUTOENCODER_PROFILES:
            raise ValueError(f"unknown autoencoder profile {self.profile!r}; choose one of "
                             f"{sorted(AUTOENCODER_PROFILES)}.")
        for name in ("steps", "batch_size", "pool_size", "eval_images", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.edge_weight is None:
            self.edge_weight = EDGE_WEIGHTS[self.world]
        if self.decoder_steps < 0 or self.decoder_noise < 0 or self.decoder_lr <= 0:
            raise ValueError(f"need decoder_steps >= 0, decoder_noise >= 0 and decoder_lr > 0; got decoder_steps="
                             f"{self.decoder_steps}, decoder_noise={self.decoder_noise}, "
                             f"decoder_lr={self.decoder_lr}.")
        if self.lr <= 0 or self.kl_weight < 0 or self.edge_weight < 0:
            raise ValueError(f"need lr > 0, kl_weight >= 0 and edge_weight >= 0; got lr={self.lr}, "
                             f"kl_weight={self.kl_weight}, edge_weight={self.edge_weight}.")
        if self.loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"unknown reconstruction loss {self.loss!r}; choose one of {RECONSTRUCTION_LOSSES}.")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive (or None for no time cap), got {self.minutes}.")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1] -> uint8 (4x less memory for the pool; the 1/510 rounding is far below the AE's error)."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def training_images(world, n: int, seed: int = 0, k: int = 3) -> torch.Tensor:
    """(n, 3, H, W) uint8: every query, context and target image of the episodes ``seed, seed + 1, ...``.

    ``task=None`` lets the world cycle through its training tasks with the seed, so ShapesWorld's forward episodes
    (map query, styled context and target) and reverse episodes (styled query, map context and target) alternate and
    the pool holds styled images and maps in about equal numbers.
    """
    images, count, episode_seed = [], 0, seed
    with tqdm(total=n, desc="drawing training images", unit="img", leave=False) as bar:
        while count < n:
            ep = world.episode(episode_seed, task=None, k=k)
            batch = to_uint8(torch.cat([ep.query[None], ep.context, ep.target[None]]))  # (k + 2, 3, H, W)
            images.append(batch)
            count += len(batch)
            episode_seed += 1
            bar.update(len(batch))
    return torch.cat(images)[:n]


def evaluation_images(world, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{kind: (n, 3, H, W) float}``: ``n`` images of every image kind in the world's episodes (all tasks).

    Task names read ``source2target``; the query is of kind ``source`` and the target of kind ``target`` (ShapesWorld:
    "img" for styled images, "edge", "seg", "depth" and the out-of-domain "scribble", "sketch", "canny"). When source
    and target share a kind (GlyphWorld's font2font), only targets are taken: the query is one fixed reference font.
    """
    kinds: dict[str, list[torch.Tensor]] = {}
    episode_seed = seed
    while not kinds or min(len(v) for v in kinds.values()) < n:
        for task in world.tasks:
            source, target = task.split("2")
            ep = world.episode(episode_seed, task=task, k=0)
            if source != target:
                kinds.setdefault(source, []).append(ep.query)
            kinds.setdefault(target, []).append(ep.target)
        episode_seed += 1
    return {kind: torch.stack(images[:n]) for kind, images in sorted(kinds.items())}  # n x (3, H, W) -> (n, 3, H, W)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB for images in [0, 1]: (B, 3, H, W) -> (B,)."""
    # PSNR = 10 log10(MAX^2 / MSE) with MAX = 1; a perfect reconstruction is capped at 100 dB
    return 10 * torch.log10(1.0 / per_image_mse(reconstruction, target).clamp_min(1e-10))


def edge_f1(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """F1 of the bright (> 0.5) pixels of stroke maps, counted over all pixels of the batch (micro average)."""
    pred, true = reconstruction.mean(1) > 0.5, target.mean(1) > 0.5  # (B, 3, H, W) -> (B, H, W) bool
    tp = (pred & true).sum().item()
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (|pred| + |true|)
    return 2 * tp / max(pred.sum().item() + true.sum().item(), 1)


@torch.no_grad()
def reconstruct(model: Autoencoder, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """decode(encode(x)) with the posterior mean, in batches; images (N, 3, H, W) in [0, 1]."""
    device = next(model.parameters()).device
    return torch.cat([model.decode(model.encode(x.to(device))).cpu() for x in images.split(batch_size)])


@torch.no_grad()
def evaluate_autoencoder(model: Autoencoder, world, n: int = 256, seed: int = 0) -> dict[str, float]:
    """Reconstruction metrics on ``n`` images of each kind of ``world`` (use a *test* split world).

    Returns ``psnr_<kind>`` (mean dB) for every kind, ``edge_f1_<kind>`` for stroke maps (edge, canny, scribble) and
    ``glyph_iou`` for glyphs; all rounded to 4 decimals so printed values reproduce.
    """
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    for kind, images in evaluation_images(world, n, seed).items():
        rec = reconstruct(model, images)
        metrics[f"psnr_{kind}"] = psnr(rec, images).mean().item()
        if kind in STROKE_KINDS:
            metrics[f"edge_f1_{kind}"] = edge_f1(rec, images)
        if kind in INK_KINDS:
            metrics["glyph_iou"] = glyph_iou(rec, images).mean().item()
    model.train(was_training)
    return {key: round(value, 4) for key, value in metrics.items()}


def edge_strength(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) in [0, 1]: the largest absolute step to a 4-neighbour, over channels.

    Both pixels of a step get it, so a 1-pixel line and the pixels beside it are all marked.
    """
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs()  # (B, C, H, W - 1): horizontal steps
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs()  # (B, C, H - 1, W): vertical steps
    step = torch.zeros_like(x)
    step[..., :, 1:] = dx
    step[..., :, :-1] = torch.maximum(step[..., :, :-1], dx)
    step[..., 1:, :] = torch.maximum(step[..., 1:, :], dy)
    step[..., :-1, :] = torch.maximum(step[..., :-1, :], dy)
    return step.amax(dim=1, keepdim=True).clamp(max=1.0)  # (B, C, H, W) -> (B, 1, H, W)


def reconstruction_error(recon: torch.Tensor, x: torch.Tensor, edge_weight: float, loss: str = "l2"
                         ) -> torch.Tensor:
    """Edge-weighted per-pixel error of ``recon`` (B, 3, H, W, in the model's [-1, 1] space) against images ``x``
    (B, 3, H, W) in [0, 1], averaged to one number; ``loss``: ``"l2"`` (as TrainConfig) or ``"l1"`` (LDM)."""
    target = 2.0 * x - 1.0  # the model's [-1, 1] image space
    # w = 1 + lambda_edge * |step of x|: pixels on a boundary count up to (1 + lambda_edge) times more. Most pixels
    # are flat background, so a plain average would let a 1-pixel edge line fade into it.
    weight = 1.0 + edge_weight * edge_strength(x)  # (B, 1, H, W), broadcast over channels
    # L1's optimum under uncertainty is the (sharper) median, L2's the mean (LDM uses L1). But L1 counts a pixel
    # off by 0.5 only 10x as much as one off by 0.05, L2 100x: L2 spends the capacity on the few badly wrong pixels
    # of thin strokes, where a miss flips the pixel across the 0.5 threshold (edge F1, glyph IoU).
    error = recon - target
    return (weight * (error.abs() if loss == "l1" else error.square())).mean()


def autoencoder_loss(model: Autoencoder, x: torch.Tensor, kl_weight: float, edge_weight: float,
                     generator: torch.Generator | None = None, loss: str = "l2"
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """LDM's first-stage objective without its perceptual and adversarial terms, plus an edge weighting.

    Images ``x`` (B, 3, H, W) in [0, 1]; ``loss``: the per-pixel error, ``"l2"`` (as TrainConfig) or ``"l1"`` (LDM).
    Returns the loss and its parts ``{"rec": ..., "kl": ...}``.
    """
    recon, posterior = model(x, generator)  # the decoder sees z ~ q(z|x), so it learns to tolerate latent noise
    rec = reconstruction_error(recon, x, edge_weight, loss)
    # KL(q(z|x) || N(0, I)) averaged per latent element; a small weight only anchors the latent scale (LDM: ~1e-6)
    kl = posterior.kl().mean()
    return rec + kl_weight * kl, {"rec": rec.item(), "kl": kl.item()}


def noisy_latents(z: torch.Tensor, max_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scaled latents ``z`` (B, c, h, w) plus Gaussian noise: half the images (at random) stay clean, the others get
    ``sigma * eps`` with one ``sigma ~ U(0, max_std)`` per image.

    The clean half keeps the decoder's reconstructions of real latents sharp; the noisy half teaches it what a
    slightly wrong latent most likely meant.
    """
    b = z.shape[0]
    sigma = torch.rand(b, 1, 1, 1, generator=generator) * max_std  # (B, 1, 1, 1): one noise level per image
    sigma = sigma * (torch.rand(b, 1, 1, 1, generator=generator) >= 0.5)  # clean for about half of them
    eps = torch.randn(z.shape, generator=generator)
    return z + (sigma * eps).to(z.device, z.dtype)


def finetune_decoder(model: Autoencoder, batch_at, pool_size: int, config: TrainConfig,
                     generator: torch.Generator, logger: CSVLogger | None = None) -> None:
    """The second phase: train the decoder alone (encoder frozen) to decode noisy latents, in place.

    A diffusion model's samples are never exactly latents of real images. A decoder trained only on the encoder's
    latents turns the denoiser's small errors into sharp, confident detail (stripes out of phase, outlines in the
    wrong place), which costs more pixel error than a softer guess would. With noise on the latents, the L2 optimum
    becomes the decoder's best guess of the image given a slightly wrong latent (Stable Diffusion's released VAE
    decoders were likewise fine-tuned alone, with the encoder and so the latent space unchanged). Because the encoder
    is frozen, a denoiser trained on this autoencoder's latents keeps working with the new decoder.

    ``batch_at(index)`` gives images (B, 3, H, W) in [0, 1]; ``model.config.scale_factor`` must already be set.
    """
    model.encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=config.decoder_lr, weight_decay=0.0)
    schedule = replace(config, lr=config.decoder_lr, steps=config.decoder_steps)
    model.train()
    bar = tqdm(range(config.decoder_steps), desc=f"decoder on noisy latents ({config.world})", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, schedule)
        x = batch_at(torch.randint(0, pool_size, (config.batch_size,), generator=generator))
        with torch.no_grad():
            z = noisy_latents(model.encode(x), config.decoder_noise, generator)  # (B, c, h, w) scaled latents
        loss = reconstruction_error(model.decoder(z / model.config.scale_factor), x, config.edge_weight, config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if logger is not None and (step % config.log_every == 0 or step == config.decoder_steps - 1):
            logger.log(step=step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
    bar.close()
    model.encoder.requires_grad_(True)
    model.eval()


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up for ``warmup_steps``, then a cosine decay from ``lr`` to ``lr / 10`` at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    # lr_t = lr_min + (lr - lr_min) (1 + cos(pi t)) / 2
    return config.lr / 10 + (config.lr - config.lr / 10) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_autoencoder(config: TrainConfig, out: str | Path | None = None, images: torch.Tensor | None = None,
                      device: torch.device | str | None = None) -> tuple[Autoencoder, dict]:
    """Train an autoencoder of ``config.profile`` on ``images`` (uint8 or float, (N, 3, H, W)), or on a pool drawn
    from the world's train split when ``images`` is None. Sets the latent scale factor from the pool at the end.

    With ``out``, writes the CSV log and loss-curve PNG there (the checkpoint is written by :func:`save_run`).
    Returns the model (eval mode) and a summary dict (steps, final loss, wall times, throughput).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    generator = seed_everything(config.seed)
    device = torch.device(device) if device is not None else get_device()
    start = time.perf_counter()
    if images is None:
        world = make_world(config.world, "train")
        images = training_images(world, config.pool_size, seed=config.seed)
    pool_seconds = time.perf_counter() - start
    model_config = AutoencoderConfig.profile(config.profile, image_size=images.shape[-1])
    # channels_last and the fused AdamW kernel (one call for all tensors): faster steps on a 2-core CPU
    # (benchmarks/autoencoder_throughput.py); the model is handed back, and saved, in the usual contiguous layout.
    model = Autoencoder(model_config).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0,
                                  fused=device.type in ("cpu", "cuda"))
    logger = CSVLogger(Path(out) / "autoencoder_log.csv") if out is not None else None

    def batch_at(index: torch.Tensor) -> torch.Tensor:
        x = images[index]
        x = (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).to(device)
        return x.contiguous(memory_format=torch.channels_last)

    train_start, cpu_start = time.perf_counter(), time.process_time()
    seen, step, loss_ema = 0, 0, None
    bar = tqdm(range(config.steps), desc=f"autoencoder ({config.world})", unit="step")
    for step in bar:
        elapsed = time.perf_counter() - train_start
        if config.minutes is not None and elapsed > 60 * config.minutes:
            bar.write(f"time cap of {config.minutes} min reached after {step} of {config.steps} steps; stopping.")
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        index = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        loss, parts = autoencoder_loss(model, batch_at(index), config.kl_weight, config.edge_weight, generator,
                                       config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += config.batch_size
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        rate = seen / max(time.perf_counter() - train_start, 1e-9)
        bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{rate:.0f}")
        if logger is not None and (step % config.log_every == 0 or step == config.steps - 1):
            logger.log(step=step, loss=loss.item(), rec=parts["rec"], kl=parts["kl"],
                       lr=optimizer.param_groups[0]["lr"], img_per_s=round(rate, 1),
                       elapsed_s=round(time.perf_counter() - train_start, 1))
    else:
        step = config.steps
    bar.close()
    train_seconds = time.perf_counter() - train_start
    # CPU seconds of this process: with one thread, about the wall time the run would take on an idle machine
    cpu_seconds = time.process_time() - cpu_start
    model.eval().to(memory_format=torch.contiguous_format)
    model.config = with_scale_factor(model.config, 1.0)
    scale = estimate_scale_factor(model, batch_at(torch.arange(min(len(images), 2048))))
    model.config = with_scale_factor(model.config, scale)
    if logger is not None:
        plot_loss_curve(logger.path, Path(out) / "autoencoder_loss.png", keys=("loss", "rec"),
                        title=f"autoencoder training loss ({config.world})")
    decoder_start = time.perf_counter()
    if config.decoder_steps:
        decoder_logger = CSVLogger(Path(out) / "autoencoder_decoder_log.csv") if out is not None else None
        finetune_decoder(model, batch_at, len(images), config, generator, decoder_logger)
        if decoder_logger is not None:
            plot_loss_curve(decoder_logger.path, Path(out) / "autoencoder_decoder_loss.png",
                            title=f"decoder on noisy latents ({config.world})")
    summary = {"steps_done": step, "final_loss_ema": round(loss_ema, 5) if loss_ema is not None else None,
               "pool_seconds": round(pool_seconds, 1), "train_seconds": round(train_seconds, 1),
               "train_cpu_seconds": round(cpu_seconds, 1),
               "img_per_s": round(seen / max(train_seconds, 1e-9), 1), "scale_factor": round(scale, 5),
               "pool_images": len(images), "decoder_steps_done": config.decoder_steps,
               "decoder_seconds": round(time.perf_counter() - decoder_start, 1)}
    return model, summary


def machine_description() -> str:
    """CPU model, core count, torch version and threads, and the load average at the end of the run."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
            f"load average at the end (1/5/15 min): {load}")


def write_model_card(folder: Path, command: str, config: TrainConfig, model: Autoencoder, summary: dict,
                     metrics: dict[str, float], total_seconds: float) -> Path:
    """``folder/autoencoder_card.md``: what was trained, how, on what machine, for how long, and how well."""
    mc, counts = model.config, model.num_parameters()
    lines = [
        f"# Autoencoder card: {config.world}",
        "",
        f"KL-regularised convolutional autoencoder (LDM first stage, small): {mc.image_channels}x{mc.image_size}x"
        f"{mc.image_size} -> latent {'x'.join(map(str, mc.latent_shape))} (f = {mc.downsample_factor}, "
        f"{mc.image_channels * mc.image_size ** 2 // math.prod(mc.latent_shape)}x fewer numbers), "
        f"profile `{config.profile}`, widths {list(mc.channels)}, pixel-unshuffle {mc.unshuffle}, "
        f"{counts['total']:,} parameters (encoder {counts['encoder']:,}, decoder {counts['decoder']:,}), "
        "weights stored in fp16.",
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        f"- Data: {summary['pool_images']} images drawn once from {config.world} *train* split episodes "
        "(queries, contexts and targets of every training task).",
        f"- Steps: {summary['steps_done']} of {config.steps}, batch {config.batch_size}, AdamW lr {config.lr} "
        f"(warm-up {config.warmup_steps}, cosine to lr/10), {config.loss.upper()} reconstruction loss, KL weight "
        f"{config.kl_weight}, edge weight {config.edge_weight}, seed {config.seed}.",
        f"- Final training loss (moving average over the last ~20 steps): {summary['final_loss_ema']}.",
        *([f"- Then the decoder alone on noisy latents (`finetune_decoder`): {config.decoder_steps} steps, noise std "
           f"up to {config.decoder_noise} on half the images, lr {config.decoder_lr} (warm-up {config.warmup_steps}, "
           f"cosine to lr/10), {summary['decoder_seconds'] / 60:.1f} min."] if config.decoder_steps else []),
        f"- Latent scale factor (1 / std of the posterior means on the pool): {mc.scale_factor:.5f}.",
        f"- Wall time: {total_seconds / 60:.1f} min in all ({summary['pool_seconds']:.0f} s drawing the pool, "
        f"{summary['train_seconds'] / 60:.1f} min training at {summary['img_per_s']} img/s, the rest evaluating); "
        f"the training loop used {summary['train_cpu_seconds'] / 60:.1f} CPU-minutes.",
        f"- Machine: {machine_description()}. The CPU was shared with other jobs, so times are noisy.",
        "",
        f"## Test metrics ({config.eval_images} *test* split images per kind, posterior mean)",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in metrics.items()],
        "",
        "PSNR in dB (per image, averaged). `edge_f1_*`: F1 of pixels > 0.5 on stroke maps, over all pixels. "
        "`glyph_iou`: per-image IoU of ink pixels (< 0.5), averaged. Computed by "
        "`ctxdiff_from_scratch.train_autoencoder.evaluate_autoencoder`.",
        "",
    ]
    path = Path(folder) / "autoencoder_card.md"
    path.write_text("\n".join(lines))
    return path


def save_run(out: str | Path, command: str, config: TrainConfig, model: Autoencoder, summary: dict,
             metrics: dict[str, float], total_seconds: float) -> Path:
    """Write the fp16 checkpoint (config + metadata JSON) and the model card into ``out``."""
    out = Path(out)
    metadata = {"world": config.world, "train_config": asdict(config), "summary": summary, "test_metrics": metrics,
                "command": command}
    model.save_pretrained(out, metadata=metadata)
    return write_model_card(out, command, config, model, summary, metrics, total_seconds)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m ctxdiff_from_scratch autoencoder",
        description="Train the tiny KL autoencoder of a world on its train split, evaluate on its test split, and "
                    "write autoencoder.{safetensors,json}, a model card, a CSV log and a loss curve to --out.")
    parser.add_argument("--world", choices=WORLDS, default=defaults.world, help="which world's images to learn")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/checkpoints/shapes")
    parser.add_argument("--profile", choices=sorted(AUTOENCODER_PROFILES), default=defaults.profile,
                        help=f"model size (default {defaults.profile}: 64x64 -> "
                             f"{'x'.join(map(str, AutoencoderConfig.profile(defaults.profile).latent_shape))})")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps (sets the lr schedule)")
    parser.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    parser.add_argument("--kl-weight", type=float, default=defaults.kl_weight)
    parser.add_argument("--edge-weight", type=float, default=None,
                        help="extra loss weight on stroke pixels (default: the world's, "
                             + ", ".join(f"{w} {v:g}" for w, v in EDGE_WEIGHTS.items()) + ")")
    parser.add_argument("--loss", choices=RECONSTRUCTION_LOSSES, default=defaults.loss,
                        help=f"per-pixel reconstruction error (default {defaults.loss}; l2 keeps thin strokes)")
    parser.add_argument("--decoder-steps", type=int, default=defaults.decoder_steps,
                        help="steps of a second phase that trains the decoder alone on noisy latents (default "
                             f"{defaults.decoder_steps}: none)")
    parser.add_argument("--decoder-noise", type=float, default=defaults.decoder_noise,
                        help="largest latent noise std of that phase, in scaled-latent units")
    parser.add_argument("--decoder-lr", type=float, default=defaults.decoder_lr, help="peak lr of that phase")
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size, help="training images drawn up front")
    parser.add_argument("--eval-images", type=int, default=defaults.eval_images, help="test images per kind")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is often faster on a CPU shared with other jobs)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: get_device())")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    config = TrainConfig(world=args.world, profile=args.profile, steps=args.steps, minutes=args.minutes,
                         batch_size=args.batch_size, lr=args.lr, kl_weight=args.kl_weight,
                         edge_weight=args.edge_weight, loss=args.loss, decoder_steps=args.decoder_steps,
                         decoder_noise=args.decoder_noise, decoder_lr=args.decoder_lr,
                         pool_size=args.pool_size, seed=args.seed,
                         eval_images=args.eval_images, threads=args.threads)
    command = "python -m ctxdiff_from_scratch autoencoder " + shlex.join(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # before any work, so drawing the pool and evaluating use it too
    start = time.perf_counter()
    model, summary = train_autoencoder(config, out=args.out, device=args.device)
    model.cpu().save_pretrained(args.out)
    shipped = Autoencoder.from_pretrained(args.out)  # metrics describe the fp16 file a user loads, not the fp32 model
    metrics = evaluate_autoencoder(shipped, make_world(config.world, "test"), n=config.eval_images)
    card = save_run(args.out, command, config, shipped, summary, metrics, time.perf_counter() - start)
    print(f"summary: {summary}")
    print(f"test metrics: {metrics}")
    print(f"wrote {Path(args.out) / 'autoencoder.safetensors'} and {card}")


if __name__ == "__main__":
    main()

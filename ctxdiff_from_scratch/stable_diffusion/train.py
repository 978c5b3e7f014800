"""``sd-train``: train Context Diffusion's projection and ControlNet on a folder of your images, on pre-trained parts.

    python -m ctxdiff_from_scratch sd-train --folder photos/ --out runs/sd-photos \\
        --clip openai/clip-vit-large-patch14 --stable-diffusion stable-diffusion-v1-5/stable-diffusion-v1-5
    python -m ctxdiff_from_scratch sd-train --folder photos/ --out runs/sd-photos --resume    # continue
    accelerate launch --multi_gpu --num_processes 4 -m ctxdiff_from_scratch sd-train ...    # several GPUs
    python -m ctxdiff_from_scratch sd-train --folder photos/ --out runs/sd-tiny --tiny --steps 3   # offline, untrained

The data is ``FolderWorld``: the query is an image's Canny edge map, the context k other images of the same folder,
the target the image itself; ``--prompt`` gives every image one prompt ("" by default). The paper's recipe is the
default: frozen CLIP ViT-L/14 for prompt and context, k drawn from {1, 2, 3} at every step, the prompt dropped 50% of
the time (the context 10%, so context guidance has an unconditional to extrapolate from), AdamW at lr 1e-4, 256 px;
the paper trains 50k steps at batch 512 (``--batch-size`` x ``--grad-accum`` is the global batch here). Trained:
the projection W_p and the ControlNet; with ``--train-decoder`` also the UNet's decoder half ("only the encoder is
frozen"). Loss: paper Eq. 2 (``ContextDiffusion.forward``).

Step s's whole global batch -- its k, the episodes, the drop flags, timesteps and noise -- comes from a generator
seeded with (seed, s) alone, so ``--resume`` continues exactly, and N processes (Accelerate: one GPU, several, or
Colab, with bf16 or fp16 where the GPU has it) train on the same global batches as one, each on its share.
Checkpoints are ``ContextDiffusion.save_pretrained`` folders (safetensors + JSON) plus the optimiser's state in
safetensors + JSON: ``ContextDiffusion.from_pretrained(<out>/checkpoints/step_XXXXXXX)`` loads the model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..checkpoint import config_from_dict
from ..config import COMBINE_MODES
from ..data import FolderWorld, collate_episodes
from ..device import get_device, seed_everything
from ..runlog import CSVLogger
from ..train import (CHECKPOINT_DIR, LATEST_NAME, checkpoint_name, checkpoint_to_resume, flatten_optimizer_state,
                     latest_checkpoint, step_generator, truncate_log, unflatten_optimizer_state)
from .model import ContextDiffusion, TrainingBatch
from .preprocessing import clip_normalize
from .tiny import build_tiny_parts

LOG_NAME, STATE_NAME, OPTIMIZER_NAME, TINY_DIR = "loss_log.csv", "trainer_state.json", "optimizer", "tiny_parts"
PAPER_SIZE, TINY_SIZE = 256, 64  # the paper trains at 256 px; the tiny parts work at 64
# Fields --resume may change; any other one must match the interrupted run, or it would not continue it.
RESUMABLE = ("out", "steps", "checkpoint_every", "log_every")


@dataclass
class SDTrainConfig:
    """One ``sd-train`` run; the fields are the command's options (``--help``)."""

    folder: str
    out: str
    clip: str | None = None
    stable_diffusion: str | None = None
    controlnet: str | None = None
    tiny: bool = False
    combine: str = "sum"
    train_decoder: bool = False
    size: int | None = None
    prompt: str = ""
    split: str = "train"
    steps: int = 50_000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    k_choices: tuple[int, ...] = (1, 2, 3)
    p_drop_prompt: float = 0.5
    p_drop_context: float = 0.1
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        self.k_choices = tuple(self.k_choices)
        if self.tiny and (self.clip or self.stable_diffusion):
            raise ValueError("--tiny builds random stand-ins for CLIP and Stable Diffusion; drop --clip and "
                             "--stable-diffusion, or drop --tiny to train on those models.")
        if not self.tiny and not (self.clip and self.stable_diffusion):
            raise ValueError("name the pre-trained parts: --clip (e.g. openai/clip-vit-large-patch14) and "
                             "--stable-diffusion (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), or pass "
                             "--tiny for untrained stand-ins that run offline.")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"--combine must be one of {COMBINE_MODES}, got {self.combine!r}.")
        if not self.k_choices or min(self.k_choices) < 1:
            raise ValueError(f"--k must list context sizes of at least 1, got {self.k_choices}.")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}.")

    @property
    def resolution(self) -> int:
        return self.size or (TINY_SIZE if self.tiny else PAPER_SIZE)


def draw_batch(world: FolderWorld, config: SDTrainConfig, step: int, latent_shape: tuple[int, int, int],
               vision_size: int, num_timesteps: int) -> TrainingBatch:
    """Step ``step``'s global batch, a function of (config.seed, step) alone."""
    generator = step_generator(config.seed, step)
    batch = config.batch_size
    k = config.k_choices[int(torch.randint(len(config.k_choices), (1,), generator=generator))]
    seeds = torch.randint(2**31 - 1, (batch,), generator=generator).tolist()
    episodes = collate_episodes([world.episode(seed, k=k) for seed in seeds])
    # FolderWorld's images are square: one antialiased resize to the vision tower's size, then CLIP's statistics
    context = F.interpolate(episodes.context.flatten(0, 1), size=(vision_size, vision_size), mode="bilinear",
                            antialias=True, align_corners=False)  # (B, k, 3, H, W) -> (B*k, 3, S, S)
    context = clip_normalize(context.clamp(0, 1)).view(batch, k, 3, vision_size, vision_size)  # -> (B, k, 3, S, S)
    return TrainingBatch(
        target=episodes.target, query=episodes.query, context=context, context_mask=episodes.context_mask,
        prompts=[config.prompt] * batch,
        drop_prompt=torch.rand(batch, generator=generator) < config.p_drop_prompt,
        drop_context=torch.rand(batch, generator=generator) < config.p_drop_context,
        t=torch.randint(num_timesteps, (batch,), generator=generator),
        noise=torch.randn(batch, *latent_shape, generator=generator),
        latent_noise=torch.randn(batch, *latent_shape, generator=generator))


def mixed_precision(requested: str, device: torch.device) -> str:
    """"auto": bf16 on a GPU that has it, else fp16 on a GPU, else none (a CPU)."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def build_model(config: SDTrainConfig, resume_from: Path | None, mixed: str) -> ContextDiffusion:
    """New trainable parts, or those of the checkpoint ``resume_from``, in float32; under mixed precision the frozen
    parts are kept in its dtype (half the memory)."""
    dtypes = dict(torch_dtype={"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32),
                  trainable_dtype=torch.float32)
    if resume_from is not None:
        return ContextDiffusion.from_pretrained(resume_from, **dtypes)
    parts = (build_tiny_parts(Path(config.out) / TINY_DIR) if config.tiny
             else {"clip": config.clip, "stable_diffusion": config.stable_diffusion})
    return ContextDiffusion.from_pretrained_parts(parts["clip"], parts["stable_diffusion"], config.controlnet,
                                                  config.combine, config.resolution, config.train_decoder, **dtypes)


class SDTrainer:
    """One run: data, model, optimiser and the Accelerate state; ``run()`` trains and checkpoints."""

    def __init__(self, config: SDTrainConfig, resume_from: Path | None = None, command: str | None = None):
        from accelerate import Accelerator  # imported here, as in the from-scratch trainer

        self.config, self.command, self.out = config, command, Path(config.out)
        device = get_device()
        self.accelerator = Accelerator(cpu=device.type == "cpu", gradient_accumulation_steps=config.grad_accum,
                                       mixed_precision=mixed_precision(config.mixed_precision, device))
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        shares = self.world_size * config.grad_accum
        if config.batch_size % shares:
            raise ValueError(f"--batch-size {config.batch_size} must split evenly over {self.world_size} "
                             f"process(es) x {config.grad_accum} accumulation step(s).")
        self.share = config.batch_size // shares
        seed_everything(config.seed)
        self.world = FolderWorld(config.folder, size=config.resolution, split=config.split)
        if max(config.k_choices) >= self.world.num_images:
            raise ValueError(f"--k up to {max(config.k_choices)} needs more than {max(config.k_choices)} images in "
                             f"split {config.split!r} of {config.folder}; it has {self.world.num_images}.")
        if self.is_main and config.tiny:  # build the tiny parts once, before other processes read them
            build_tiny_parts(self.out / TINY_DIR)
        self.accelerator.wait_for_everyone()
        self.model = build_model(config, resume_from, self.accelerator.mixed_precision)
        if config.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.optimizer = torch.optim.AdamW(self.model.trainable_parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.step = 0
        if resume_from is not None:
            self.load_training_state(resume_from)
        self.ddp_model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        side = self.model.resolution // self.model.vae_factor
        self.latent_shape = (self.model.unet.config.in_channels, side, side)
        if self.is_main:
            if resume_from is not None:
                truncate_log(self.out / LOG_NAME, self.step)
            self.logger = CSVLogger(self.out / LOG_NAME, resume=resume_from is not None)

    def train_step(self) -> float:
        """One optimiser step on the step's global batch; returns its mean loss over all processes."""
        batch = draw_batch(self.world, self.config, self.step, self.latent_shape, self.model.vision_size,
                           self.model.noise_scheduler.config.num_train_timesteps)
        losses = []
        for micro in range(self.config.grad_accum):
            start = (micro * self.world_size + self.rank) * self.share
            part = batch.slice(slice(start, start + self.share)).to(self.accelerator.device)
            with self.accelerator.accumulate(self.ddp_model):
                loss = self.ddp_model(part)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.trainable_parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad()
            losses.append(loss.detach().float())
        self.step += 1
        return self.accelerator.reduce(torch.stack(losses).mean(), "mean").item()

    def run(self) -> dict:
        config, start_step, start = self.config, self.step, time.perf_counter()
        if self.is_main:
            trainable = sum(p.numel() for p in self.model.trainable_parameters())
            print(f"sd-train: {self.world}; {trainable / 1e6:.2f}M trainable parameters; "
                  f"{self.world_size} process(es), mixed precision {self.accelerator.mixed_precision}")
        bar = tqdm(total=config.steps, initial=self.step, desc="sd-train", disable=not self.is_main)
        loss = float("nan")
        while self.step < config.steps:
            loss = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.is_main and (self.step % config.log_every == 0 or self.step == config.steps):
                self.logger.log(step=self.step, loss=round(loss, 6))
            if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                self.save_checkpoint()
        bar.close()
        checkpoint = latest_checkpoint(self.out)
        summary = {"steps": self.step, "steps_this_session": self.step - start_step, "final_loss": loss,
                   "seconds": round(time.perf_counter() - start, 1), "checkpoint": str(checkpoint)}
        if self.is_main:
            print(f"trained to step {self.step} (loss {loss:.4f}); the model: "
                  f"ContextDiffusion.from_pretrained({str(checkpoint)!r})")
        return summary

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX`` (via a temporary folder), point ``latest.json`` at it, drop older ones."""
        root = self.out / CHECKPOINT_DIR
        final = root / checkpoint_name(self.step)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            tmp = root / (final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.accelerator.unwrap_model(self.ddp_model).save_pretrained(tmp)
            tensors, rest = flatten_optimizer_state(self.optimizer.state_dict())
            save_file(tensors, str(tmp / f"{OPTIMIZER_NAME}.safetensors"))
            (tmp / f"{OPTIMIZER_NAME}.json").write_text(json.dumps(rest, indent=1) + "\n")
            state = {"step": self.step, "config": dataclasses.asdict(self.config), "command": self.command,
                     "processes": self.world_size}
            (tmp / STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = root / LATEST_NAME
            (root / (LATEST_NAME + ".tmp")).write_text(json.dumps({"folder": final.name, "step": self.step}) + "\n")
            os.replace(root / (LATEST_NAME + ".tmp"), pointer)  # atomic: a kill leaves the old or the new pointer
            for old in root.glob("step_*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def load_training_state(self, folder: Path) -> None:
        """The optimiser state and step of checkpoint ``folder`` (its weights were loaded by ``build_model``)."""
        tensors = load_file(str(folder / f"{OPTIMIZER_NAME}.safetensors"))
        rest = json.loads((folder / f"{OPTIMIZER_NAME}.json").read_text())
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors, rest))
        self.step = json.loads((folder / STATE_NAME).read_text())["step"]


def resumed_config(checkpoint: Path, overrides: dict) -> SDTrainConfig:
    """The interrupted run's config, with only the :data:`RESUMABLE` fields changed by ``overrides``."""
    stored = json.loads((checkpoint / STATE_NAME).read_text())["config"]
    differ = {k: (stored[k], v) for k, v in overrides.items()
              if k not in RESUMABLE and _normalise(stored.get(k)) != _normalise(v)}
    if differ:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"--resume continues the interrupted run, but these options differ from it: {details}. "
                         f"Only {', '.join(RESUMABLE)} may change; start a new --out for a different run.")
    return config_from_dict(SDTrainConfig, {**stored, **{k: v for k, v in overrides.items() if k in RESUMABLE}})


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch sd-train",
                                     description="Train Context Diffusion's projection and ControlNet (optionally the "
                                                 "UNet decoder) on pre-trained CLIP + Stable Diffusion, on a folder "
                                                 "of images (Canny-edge queries, context from the same folder).")
    add = parser.add_argument
    add("--folder", required=True, help="folder of training images (FolderWorld)")
    add("--out", default=None, help="output folder (default: runs/sd-<folder name>)")
    add("--clip", default=None, help="CLIP id or folder for prompt and context, e.g. openai/clip-vit-large-patch14")
    add("--stable-diffusion", default=None,
        help="Stable Diffusion id or folder (unet/, vae/, scheduler/), e.g. "
             "stable-diffusion-v1-5/stable-diffusion-v1-5")
    add("--controlnet", default=None,
        help="ControlNet id or folder to start from, e.g. lllyasviel/sd-controlnet-canny (default: a copy of the "
             "UNet's encoder)")
    add("--tiny", action="store_true", default=None,
        help=f"use tiny random stand-ins (written to <out>/{TINY_DIR}): runs offline, learns nothing useful")
    add("--combine", choices=COMBINE_MODES, default=None, help="merge the k context images: sum (paper), mean, concat")
    add("--train-decoder", action="store_true", default=None, help="also train the UNet's decoder half")
    add("--size", type=int, default=None, help=f"image side in pixels (default {PAPER_SIZE}, {TINY_SIZE} with --tiny)")
    add("--prompt", default=None, help="one prompt for every image of the folder (default: none)")
    add("--split", choices=("all", "train"), default=None,
        help="train on FolderWorld's train split (default; 20%% held out) or on all images")
    add("--steps", type=int, default=None, help="optimiser steps (default 50000, the paper's)")
    add("--batch-size", type=int, default=None, help="global batch per optimiser step (default 8)")
    add("--grad-accum", type=int, default=None, help="micro-steps per optimiser step (default 1)")
    add("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4, the paper's)")
    add("--k", type=int, nargs="+", default=None, dest="k_choices", metavar="K",
        help="context sizes to draw from (default 1 2 3)")
    add("--drop-prompt", type=float, default=None, dest="p_drop_prompt", metavar="P",
        help="prompt dropout (default 0.5)")
    add("--drop-context", type=float, default=None, dest="p_drop_context", metavar="P",
        help="context dropout (default 0.1)")
    add("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default=None,
        help="auto (default): bf16 on GPUs that have it, else fp16; none on a CPU")
    add("--gradient-checkpointing", action="store_true", default=None, help="less GPU memory, ~30%% slower")
    add("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 1000)")
    add("--log-every", type=int, default=None, help="steps between rows of loss_log.csv (default 10)")
    add("--seed", type=int, default=None)
    add("--resume", nargs="?", const=True, default=False,
        help="continue the run in --out from its latest checkpoint (or from the checkpoint folder given)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    resume = args.pop("resume")
    overrides = {k: v for k, v in args.items() if v is not None}
    overrides["folder"] = str(Path(overrides["folder"]).resolve())  # one spelling of the folder, for --resume
    overrides.setdefault("out", str(Path("runs") / f"sd-{Path(overrides['folder']).name}"))
    checkpoint = None
    if resume:
        checkpoint = checkpoint_to_resume(resume, Path(overrides["out"]), required_file=STATE_NAME)
        config = resumed_config(checkpoint, overrides)
    else:
        config = SDTrainConfig(**overrides)
    command = "python -m ctxdiff_from_scratch sd-train " + shlex.join(argv)
    return SDTrainer(config, checkpoint, command).run()


if __name__ == "__main__":
    main()

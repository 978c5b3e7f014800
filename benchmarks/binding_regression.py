"""Where does colour binding fail: in the visual tokens h^V, or in the denoiser that reads them?

The shipped ShapesWorld model paints the context's palette but not which shape wears which colour
(docs/experiments.md, section 14), and its own conditional mean already lacks the binding. This screen trains the
`cpu` UNet + query adapter (concatenated context tokens, paper Eq. 3) on that conditional mean alone, E[z_0 | query,
context]: the input is pure noise at t = T - 1 and the target is z_0, so one step costs one forward and backward pass
and the score needs no sampler. Every step draws never-seen train episodes (the three forward tasks in turn, k = 3),
so nothing can be memorised. It scores, on 48 unseen seg2img *train* episodes (seeds from 1,000,000, as ``eval --split
train --first-seed 1000000``), the decoded prediction's MSE on the target's shape pixels, beside two hand-made answers
on the same episodes: every shape in the mean colour of the context's shapes ("palette only") and every shape in the
mean colour of its own class in the context ("perfect binding", flat colours).

``--tokens`` chooses what the k context images become before Eq. 3's projection:

* ``frozen``: the shipped frozen image encoder's 8x8 grid of tokens (what the model uses);
* ``latent``: a trainable two-layer conv tokenizer over the context images' latents (8x8 positions);
* ``pixels``: a trainable conv tokenizer over the context images' pixels, three stride-2 steps down to 8x8 positions
  (receptive field ~30 pixels, a whole shape);
* ``oracle``: perfect tokens, read off the layouts: per 8x8-pixel patch the share of each shape class and of the
  background, and the mean colours of its shape and background pixels, through one trainable linear layer.

Each gets a learned position embedding (``latent``, ``pixels``, ``oracle``) and, with ``--image-index``, a learned
embedding of which of the k images a token came from. ``--class-weight w`` (trainable tokenizers) adds w times an
auxiliary loss that makes each token name its patch: a linear head predicts the patch's class shares (the oracle's
first 7 features) from the token, cross-entropy against them; it asks whether tokens that *know* the classes are what
the denoiser needs, as the frozen encoder could be trained to provide.

If the denoiser binds with oracle tokens but not with the frozen ones, the limit is h^V; if it fails even with oracle
tokens, the limit is where and how the denoiser reads them.

Run: ``.venv/bin/python benchmarks/binding_regression.py --tokens oracle --minutes 30 --out runs/binding/oracle``
(one thread: ~1 step/s). Measured tables: docs/experiments.md, sections 19 and 21.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ctxdiff_from_scratch.adapter import QueryAdapter
from ctxdiff_from_scratch.data.shapes import (FORWARD_TASKS, NUM_PATCH_CLASSES, ShapesWorld, patch_class_cross_entropy,
                                              patch_class_shares)
from ctxdiff_from_scratch.data.shapes_layout import SHAPE_CLASSES, rasterize
from ctxdiff_from_scratch.evaluate import shape_pixel_errors
from ctxdiff_from_scratch.model import Conditions, ContextDiffusionModel, FrozenParts, ModelConfig
from ctxdiff_from_scratch.tune_guidance import UNSEEN_FIRST_SEED  # unseen train episodes

TOKENS = ("frozen", "latent", "pixels", "oracle")
K = 3  # context images per episode
PATCH = 8  # pixels per token side: a 64-pixel image gives the image encoder's 8x8 grid
TRAIN_SEED_BASE = 10_000_000  # fresh training episodes: seeds far from every split's evaluation seeds
EVAL_EPISODES = 48
ORACLE_FEATURES = NUM_PATCH_CLASSES + 3 + 3  # class shares incl. background, shape RGB, background RGB


def oracle_features(image: torch.Tensor, classes: np.ndarray) -> torch.Tensor:
    """Perfect per-patch tokens of one context image.

    image: (3, H, W) in [0, 1]; classes: (H, W) int, -1 on the background. Returns (H/8 * W/8, ORACLE_FEATURES).
    """
    labels = torch.from_numpy(classes.astype(np.int64))  # (H, W), -1 on the background
    shares = patch_class_shares(labels[None], image.shape[-1] // PATCH)[0]  # (1, H, W) -> (g*g, 7)
    is_shape = (labels >= 0).float()[None]  # (1, H, W)

    def masked_mean(mask: torch.Tensor) -> torch.Tensor:  # (1, H, W) -> (3, g, g): mean colour where mask
        total = F.avg_pool2d(image * mask, PATCH)
        return total / F.avg_pool2d(mask, PATCH).clamp(min=1e-6)

    colours = torch.cat([masked_mean(is_shape), masked_mean(1 - is_shape)]).flatten(1).T  # (6, g, g) -> (g*g, 6)
    return torch.cat([shares, colours], dim=1)  # (g*g, 13)


class ContextTokenizer(nn.Module):
    """The k context images -> (B, k, N_v, D_v) tokens, for each ``--tokens`` choice."""

    def __init__(self, kind: str, parts: FrozenParts, image_index: bool, class_loss: bool = False):
        super().__init__()
        self.kind, self.parts = kind, parts
        dim, grid = parts.image_encoder.config.dim, parts.image_encoder.config.grid
        if kind == "latent":
            channels = parts.autoencoder.config.latent_channels
            self.net = nn.Sequential(nn.Conv2d(channels, 128, 3, padding=1), nn.SiLU(),
                                     nn.Conv2d(128, dim, 3, padding=1))
        elif kind == "pixels":
            self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(),
                                     nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),  # 64 -> 32
                                     nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.SiLU(),  # 32 -> 16
                                     nn.Conv2d(128, dim, 3, stride=2, padding=1), nn.SiLU(),  # 16 -> 8
                                     nn.Conv2d(dim, dim, 3, padding=1))
        elif kind == "oracle":
            self.net = nn.Linear(ORACLE_FEATURES, dim)
        self.position = nn.Parameter(0.02 * torch.randn(grid * grid, dim)) if kind != "frozen" else None
        self.index = nn.Parameter(0.02 * torch.randn(K, 1, dim)) if image_index else None
        self.class_head = nn.Linear(dim, NUM_PATCH_CLASSES) if class_loss else None
        self.last_tokens: torch.Tensor | None = None  # the latest forward's tokens, for the auxiliary loss

    def forward(self, batch: dict) -> torch.Tensor:
        if self.kind == "frozen":
            tokens = batch["frozen"]  # (B, k, N_v, D_v), computed once per batch by the frozen encoder
        elif self.kind in ("latent", "pixels"):
            maps = batch["latent"] if self.kind == "latent" else batch["context"]  # (B, k, C, g, g) or (B, k, 3, H, W)
            b = maps.shape[0]
            h = self.net(maps.flatten(0, 1))  # (B, k, C, h, w) -> (B*k, C, h, w) -> (B*k, D_v, g, g)
            tokens = h.flatten(2).transpose(1, 2).reshape(b, K, -1, h.shape[1])  # -> (B*k, g*g, D) -> (B, k, g*g, D)
        else:
            tokens = self.net(batch["oracle"])  # (B, k, g*g, 13) -> (B, k, g*g, D_v)
        if self.position is not None:
            tokens = tokens + self.position  # (g*g, D) broadcasts over (B, k)
        if self.index is not None:
            tokens = tokens + self.index  # (k, 1, D): which context image a token came from
        self.last_tokens = tokens
        return tokens

    def class_loss(self, shares: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the head's class distribution per token against the patch's class shares (B, k, g*g, 7)."""
        return patch_class_cross_entropy(self.class_head(self.last_tokens), shares)  # (B, k, g*g, D) -> (.., 7)


@torch.no_grad()
def build_batch(world: ShapesWorld, model: ContextDiffusionModel, parts: FrozenParts, seeds: list[int],
                tasks: list[str], kind: str, with_shares: bool = False) -> dict:
    """Render the episodes and run the frozen parts once: query, target, z_0, shape mask and the tokenizer's input."""
    episodes = [world.episode(seed, task=task, k=K) for seed, task in zip(seeds, tasks)]
    target = torch.stack([e.target for e in episodes])  # (B, 3, H, W)
    context = torch.stack([e.context for e in episodes])  # (B, k, 3, H, W)
    specs = [world.episode_spec(seed, task=task, k=K) for seed, task in zip(seeds, tasks)]
    target_classes = np.stack([rasterize(s.target_layout, world.size).classes for s in specs])  # (B, H, W)
    batch = {"query": torch.stack([e.query for e in episodes]), "target": target, "context": context,
             "z0": model.encode_images(target), "target_classes": torch.from_numpy(target_classes.astype(np.int64)),
             "context_classes": [[rasterize(layout, world.size).classes for layout in s.context_layouts]
                                 for s in specs]}
    batch["shape_mask"] = batch["target_classes"] >= 0  # (B, H, W) bool
    flat = context.flatten(0, 1)  # (B, k, 3, H, W) -> (B*k, 3, H, W)
    if kind == "frozen":
        tokens = parts.image_encoder(flat).tokens  # (B*k, N_v, D_v)
        batch["frozen"] = tokens.view(len(seeds), K, *tokens.shape[1:])  # -> (B, k, N_v, D_v)
    elif kind == "latent":
        latents = model.encode_images(flat)  # (B*k, C, g, g)
        batch["latent"] = latents.view(len(seeds), K, *latents.shape[1:])  # -> (B, k, C, g, g)
    if kind == "oracle" or with_shares:
        batch["oracle"] = torch.stack([torch.stack([oracle_features(image, rasterize(layout, world.size).classes)
                                                    for image, layout in zip(e.context, s.context_layouts)])
                                       for e, s in zip(episodes, specs)])  # (B, k, g*g, 13)
    return batch


def flat_answers(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The "palette only" and "perfect binding" images, (B, 3, H, W) each: every target shape painted in the mean colour
    of the context's shapes, or of its own class's pixels in the context; the target's own pixels elsewhere."""
    target, mask = batch["target"], batch["shape_mask"]
    palette_pred, binding_pred = target.clone(), target.clone()
    for i, (context, classes) in enumerate(zip(batch["context"], batch["context_classes"])):
        classes = [torch.from_numpy(c.astype(np.int64)) for c in classes]
        shape_pixels = torch.cat([image[:, c >= 0] for image, c in zip(context, classes)], dim=1)  # (3, P)
        palette = shape_pixels.mean(dim=1)
        palette_pred[i][:, mask[i]] = palette[:, None]
        target_classes = batch["target_classes"][i]  # (H, W)
        for cls in target_classes[mask[i]].unique():
            pixels = torch.cat([image[:, c == cls] for image, c in zip(context, classes)], dim=1)
            colour = pixels.mean(dim=1) if pixels.shape[1] else palette
            binding_pred[i][:, target_classes == cls] = colour[:, None]
    return palette_pred, binding_pred


def hand_made_bounds(batch: dict) -> dict:
    """Shape-pixel MSE of "palette only" and "perfect binding" (``flat_answers``) on the batch's episodes."""
    target, mask = batch["target"], batch["shape_mask"]
    palette_pred, binding_pred = flat_answers(batch)
    scores = {}
    for name, pred in (("palette_only", palette_pred), ("perfect_binding", binding_pred)):
        errors, counts = shape_pixel_errors(pred, target, mask)
        scores[name] = round((errors.sum() / counts.sum()).item(), 4)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", choices=TOKENS, default="frozen")
    parser.add_argument("--image-index", action="store_true", help="add a learned embedding of each token's image")
    parser.add_argument("--attention-8x8", action="store_true",
                        help="cross-attention also at the UNet's 8x8 level (head_dim 16), not only 4x4 and 2x2")
    parser.add_argument("--class-weight", type=float, default=0.0,
                        help="weight of the auxiliary per-token class loss (trainable tokenizers; 0: off)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="data/checkpoints/shapes")
    parser.add_argument("--out", required=True, help="folder for log.csv and summary.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    parts = FrozenParts.load(args.parts)
    overrides = {"attention_levels": (True, True, True), "head_dim": 16} if args.attention_8x8 else {}
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder, world="shapes",
                                    adapter=True, combine="concat", **overrides)
    model = ContextDiffusionModel(config, parts)
    model.denoiser.adapter = QueryAdapter.from_unet(model.unet, config.adapter)  # ControlNet-style: copy the encoder
    denoiser = model.denoiser.train()
    if args.class_weight and args.tokens not in ("latent", "pixels"):
        parser.error("--class-weight trains a tokenizer to name its patches: use --tokens latent or pixels")
    tokenizer = ContextTokenizer(args.tokens, parts, args.image_index, class_loss=args.class_weight > 0)
    params = list(denoiser.parameters()) + list(tokenizer.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    world = ShapesWorld(split="train")
    eval_seeds = list(range(UNSEEN_FIRST_SEED, UNSEEN_FIRST_SEED + EVAL_EPISODES))
    eval_batch = build_batch(world, model, parts, eval_seeds, ["seg2img"] * EVAL_EPISODES, args.tokens)
    bounds = hand_made_bounds(eval_batch)
    last_t = torch.full((1,), config.schedule.num_train_timesteps - 1)
    eval_noise = torch.randn(EVAL_EPISODES, *eval_batch["z0"].shape[1:], generator=torch.Generator().manual_seed(0))

    def conditions(batch: dict) -> Conditions:
        n = batch["query"].shape[0]
        return Conditions(None, None, tokenizer(batch), torch.ones(n, K, dtype=torch.bool), batch["query"])

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        denoiser.eval(), tokenizer.eval()
        pred = denoiser(eval_noise, last_t.expand(EVAL_EPISODES), conditions(eval_batch))
        image = model.decode_latents(pred).clamp(0, 1)
        mask = eval_batch["shape_mask"]
        shape_err, shape_n = shape_pixel_errors(image, eval_batch["target"], mask)
        bg_err, bg_n = shape_pixel_errors(image, eval_batch["target"], ~mask)
        denoiser.train(), tokenizer.train()
        return (shape_err.sum() / shape_n.sum()).item(), (bg_err.sum() / bg_n.sum()).item()

    print(f"{args.tokens}: trainable {sum(p.numel() for p in params):,}; bounds on the eval episodes {bounds}",
          flush=True)
    rows, step, start = [], 0, time.time()
    progress = tqdm(desc=f"binding regression ({args.tokens})", unit="step")
    while time.time() - start < args.minutes * 60:
        seeds = [TRAIN_SEED_BASE + args.batch_size * step + i for i in range(args.batch_size)]
        tasks = [FORWARD_TASKS[(step * args.batch_size + i) % len(FORWARD_TASKS)] for i in range(args.batch_size)]
        batch = build_batch(world, model, parts, seeds, tasks, args.tokens, with_shares=args.class_weight > 0)
        noise = torch.randn_like(batch["z0"])
        # the conditional mean: from pure noise at t = T - 1, predict z_0 directly
        loss = F.mse_loss(denoiser(noise, last_t.expand(len(seeds)), conditions(batch)), batch["z0"])
        if args.class_weight:
            loss = loss + args.class_weight * tokenizer.class_loss(batch["oracle"][..., :NUM_PATCH_CLASSES])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        progress.update()
        if step % args.eval_every == 0:
            shape, background = evaluate()
            rows.append({"step": step, "minutes": round((time.time() - start) / 60, 2), "loss": round(loss.item(), 5),
                         "shape_mse": round(shape, 4), "background_mse": round(background, 5)})
            print(rows[-1], flush=True)
            with open(out / "log.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    progress.close()
    summary = {"args": vars(args), "steps": step, "minutes": round((time.time() - start) / 60, 2),
               "episodes_seen": step * args.batch_size, "bounds": bounds,
               "best_shape_mse": min((r["shape_mse"] for r in rows), default=None),
               "final": rows[-1] if rows else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

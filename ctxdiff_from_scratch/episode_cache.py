"""A fixed pool of training episodes, pre-encoded once by the frozen parts, so training runs only the denoiser.

Every term of paper Eq. 2 except the denoiser comes from frozen networks: the target latent z_0 = E(target) (the
autoencoder), the visual tokens f(v_i) of each context image (the image encoder) and h^c (the text encoder). They do
not change during training, so we compute them once for ``pool_size`` episodes and train on random batches of that
pool, which removes the frozen encoders from the training loop.

The pool holds one group per context size k (``k_choices``), ``pool_size // len(k_choices)`` episodes each, drawn
with ``world.episode(seed, k=k)`` so that every group keeps the world's guarantees for that k (e.g. in ShapesWorld
every shape class of the target appears somewhere in the k context images). Episode seeds are 0, 1, 2, ... spread
over the groups, so no two episodes share a seed.

Memory: targets as fp32 latents, queries as uint8 images (the worlds' images are 8-bit anyway), tokens as fp16.
The shipped cpu recipe (6000 episodes, k in {1, 2, 3}, 64 tokens of width 128) takes about 0.3 GB. A model that
tokenizes the context itself (``ContextConfig.tokenizer = "latents"``) also keeps the context latents, as fp16:
about 0.08 GB more for that pool (48x8x8 latents). The Prompt-Diffusion-style baseline reads example pairs
(``baselines/prompt_diffusion.py``): its pool keeps each context image and its source as uint8 images. A tokenizer
with a class head (``ContextConfig.patch_classes``) also needs each context token's patch class shares, read off
ShapesWorld's layouts: fp16, about 16 MB for that pool.

A fixed pool is seen again and again (6000 episodes, a few hundred times each in a long run), and a network that can
memorise its episodes need not learn to read the context. :class:`PoolRefresher` therefore overwrites a rotating
window of every group with never-seen episodes at every step (``train --fresh-per-step``): with m new episodes per
group and step and batch B, an episode is drawn about B / (m * len(k_choices)) times before it is replaced, at the
cost of encoding those episodes in the training loop.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .baselines.prompt_diffusion import PairConditions
from .context import encode_context_images
from .data import collate_episodes
from .data.shapes import patch_class_shares
from .model import Conditions, ContextDiffusionModel

ENCODE_BATCH = 128  # episodes encoded per forward pass while building the pool
# Seeds of the episodes that replace pooled ones: far beyond the pool's (0 .. pool_size - 1) and the unseen train
# episodes that tune-guidance scores (1,000,000 on), so none of those is ever trained on.
FRESH_SEED_BASE = 10**8


@dataclass
class EpisodeGroup:
    """All pooled episodes with the same k. n = number of episodes.

    latents:      (n, C, h, w) fp32   z_0 = E(target), scaled
    queries:      (n, 3, H, W) uint8  the query images, value * 255
    image_tokens: (n, k, N_v, D_v) fp16 one token sequence per context image; (n, k, 0, D_v) for a model that
                  reads only its own tokens (``tokenizer="latents"``) or example pairs (``reads_pairs``): the
                  frozen encoder's tokens would go unread
    text_tokens:  (n, L, D_c) fp16 or None (no prompts in this world); text_mask (n, L) bool (False on "" prompts)
    context_latents: (n, k, C, h, w) fp16 the context images' latents, or None (a model that reads only the
                  frozen encoder's tokens)
    pair_sources, pair_targets: (n, k, 3, H, W) uint8 each context image's source view and the image itself, for a
                  model that reads example pairs (``model.reads_pairs``); else None
    class_shares: (n, k, h*w, classes) fp16 per context token, the share of its patch's pixels of each class
                  (``data.shapes.patch_class_shares``), for a tokenizer with a class head; else None
    """

    latents: torch.Tensor
    queries: torch.Tensor
    image_tokens: torch.Tensor
    text_tokens: torch.Tensor | None
    text_mask: torch.Tensor | None
    context_latents: torch.Tensor | None = None
    pair_sources: torch.Tensor | None = None
    pair_targets: torch.Tensor | None = None
    class_shares: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def k(self) -> int:
        return self.image_tokens.shape[1]

    def batch(self, index: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor, Conditions]:
        """Episodes ``index`` (B,) as (z_0 (B, C, h, w), Conditions) in fp32 on ``device``."""
        image_tokens = self.image_tokens[index].to(device, torch.float32)  # (B, k, N_v, D_v)
        context_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=device)  # (B, k): all real
        text_tokens = text_mask = None
        if self.text_tokens is not None:
            text_tokens = self.text_tokens[index].to(device, torch.float32)
            text_mask = self.text_mask[index].to(device)
        query = self.queries[index].to(device, torch.float32) / 255.0
        context_latents = (None if self.context_latents is None
                           else self.context_latents[index].to(device, torch.float32))  # (B, k, C, h, w)
        cond = Conditions(text_tokens, text_mask, image_tokens, context_mask, query, context_latents)
        if self.pair_sources is not None:
            sources, targets = (images[index].to(device, torch.float32) / 255.0
                                for images in (self.pair_sources, self.pair_targets))  # (B, k, 3, H, W)
            cond = PairConditions.from_conditions(cond, sources, targets)
        return self.latents[index].to(device), cond

    def patch_class_shares(self, index: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """Episodes ``index`` (B,): their context tokens' class shares (B, k, h*w, classes) in fp32 on ``device``."""
        if self.class_shares is None:
            raise ValueError("this pool keeps no patch class shares: build it for a model whose tokenizer has a "
                             "class head (ContextConfig.patch_classes > 0).")
        return self.class_shares[index].to(device, torch.float32)

    def write(self, slots: torch.Tensor, fresh: "EpisodeGroup") -> None:
        """Overwrite the episodes at ``slots`` (m,) with ``fresh``'s m episodes (same k), in place.

        Prompt tokens are padded (masked) to the longer of the two lengths: a pool keeps only the token positions its
        prompts use, and a new prompt may be longer.
        """
        if self.text_tokens is not None:
            length = max(self.text_tokens.shape[1], fresh.text_tokens.shape[1])
            self.text_tokens, self.text_mask = _pad_tokens(self.text_tokens, self.text_mask, length)
            fresh.text_tokens, fresh.text_mask = _pad_tokens(fresh.text_tokens, fresh.text_mask, length)
            self.text_tokens[slots], self.text_mask[slots] = fresh.text_tokens, fresh.text_mask
        self.latents[slots], self.queries[slots], self.image_tokens[slots] = (fresh.latents, fresh.queries,
                                                                               fresh.image_tokens)
        for name in ("context_latents", "pair_sources", "pair_targets", "class_shares"):
            if getattr(self, name) is not None:
                getattr(self, name)[slots] = getattr(fresh, name)


class EpisodePool:
    """Pre-encoded episodes, one :class:`EpisodeGroup` per k. Build with :meth:`build`, cache with :meth:`save`."""

    def __init__(self, groups: dict[int, EpisodeGroup], key: dict):
        self.groups, self.key = groups, key

    @property
    def k_choices(self) -> tuple[int, ...]:
        return tuple(self.groups)

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def nbytes(self) -> int:
        tensors = [t for g in self.groups.values() for t in vars(g).values() if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    @classmethod
    def build(cls, model: ContextDiffusionModel, world, pool_size: int, k_choices: tuple[int, ...],
              progress: bool = True) -> "EpisodePool":
        """Draw ``pool_size`` train episodes of ``world`` and encode them with ``model``'s frozen parts."""
        if pool_size < len(k_choices):
            raise ValueError(f"pool_size={pool_size} is smaller than the number of k choices {k_choices}: every k "
                             "needs at least one episode.")
        per_group = pool_size // len(k_choices)
        bar = tqdm(total=per_group * len(k_choices), desc="encoding episode pool", disable=not progress)
        groups = {k: encode_episodes(model, world, [i * len(k_choices) + j for i in range(per_group)], k, bar)
                  for j, k in enumerate(k_choices)}
        bar.close()
        return cls(_trim_text(groups), pool_key(model, world, pool_size, k_choices))

    def save(self, path: str | Path) -> Path:
        """Write the pool to one safetensors file; its key (what it was built from) goes into the metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"k{k}.{name}": value.contiguous() for k, group in self.groups.items()
                   for name, value in vars(group).items() if value is not None}
        save_file(tensors, str(path), metadata={"key": json.dumps(self.key, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: str | Path, key: dict) -> "EpisodePool | None":
        """The pool cached at ``path`` if it was built from the same ``key``, else None (rebuild it)."""
        path = Path(path)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            stored = json.loads((f.metadata() or {}).get("key", "{}"))
        if stored != json.loads(json.dumps(key, sort_keys=True)):
            return None
        tensors = load_file(str(path))
        groups = {}
        for k in key["k_choices"]:
            fields = ("latents", "queries", "image_tokens", "text_tokens", "text_mask", "context_latents",
                      "pair_sources", "pair_targets", "class_shares")
            groups[k] = EpisodeGroup(*(tensors.get(f"k{k}.{name}") for name in fields))
        return cls(groups, key)


def pool_key(model: ContextDiffusionModel, world, pool_size: int, k_choices: tuple[int, ...]) -> dict:
    """What a pool depends on: the world, its size, the k's, what it keeps beyond the frozen encoders' outputs
    (context latents, example pairs, patch class shares), and a fingerprint of the frozen parts' weights."""
    digest = hashlib.sha1()
    for part in (model.autoencoder, model.image_encoder, model.text_encoder):
        for name, tensor in ([] if part is None else sorted(part.state_dict().items())):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return {"world": repr(world), "pool_size": pool_size, "k_choices": list(k_choices),
            "image_size": model.config.image_size, "context_latents": model.config.context.learns_tokens,
            "frozen_tokens": model.config.context.reads_frozen_tokens and not model.reads_pairs,
            "pairs": model.reads_pairs, "patch_classes": model.config.context.patch_classes,
            "parts_sha1": digest.hexdigest()}


def load_or_build_pool(model: ContextDiffusionModel, world, pool_size: int, k_choices: tuple[int, ...],
                       cache: str | Path | None = None, progress: bool = True) -> EpisodePool:
    """The pool cached at ``cache`` if it matches, else a freshly built one (written to ``cache`` when given)."""
    if cache is not None:
        pool = EpisodePool.load(cache, pool_key(model, world, pool_size, k_choices))
        if pool is not None:
            return pool
    pool = EpisodePool.build(model, world, pool_size, k_choices, progress=progress)
    if cache is not None:
        pool.save(cache)
    return pool


def encode_episodes(model: ContextDiffusionModel, world, seeds: list[int], k: int, bar=None) -> EpisodeGroup:
    """Draw the episodes ``seeds`` (k context images each) and encode them with the frozen parts, in chunks."""
    chunks = [_encode_chunk(model, world, seeds[s:s + ENCODE_BATCH], k, bar) for s in range(0, len(seeds),
                                                                                        ENCODE_BATCH)]
    return EpisodeGroup(*(None if chunks[0][i] is None else torch.cat([c[i] for c in chunks])
                          for i in range(len(chunks[0]))))


@torch.no_grad()
def _encode_chunk(model: ContextDiffusionModel, world, seeds: list[int], k: int, bar) -> tuple:
    device = model.device
    class_shares = None
    if model.config.context.patch_classes:
        if not hasattr(world, "labelled_episode"):
            raise ValueError(f"a tokenizer with a class head learns from the layouts' class maps, which {world!r} "
                             "does not have: train it on ShapesWorld, or without --patch-class-weight.")
        episodes, classes = zip(*(world.labelled_episode(seed, k=k) for seed in seeds))
        class_maps = torch.from_numpy(np.stack(classes))  # n x (k, H, W) -> (n, k, H, W)
        grid = model.config.context.latent_side
        class_shares = patch_class_shares(class_maps.flatten(0, 1), grid).half()  # (n*k, H, W) -> (n*k, g*g, C)
        class_shares = class_shares.unflatten(0, (len(seeds), k))  # -> (n, k, g*g, C)
    else:
        episodes = [world.episode(seed, k=k) for seed in seeds]
    batch = collate_episodes(list(episodes)).to(device)
    latents = model.encode_images(batch.target).float().cpu()
    queries = _to_bytes(batch.query)
    if not model.config.context.reads_frozen_tokens or model.reads_pairs:  # tokens from the latents, or no tokens
        image_tokens = torch.zeros(len(seeds), k, 0, model.config.context.visual_dim, dtype=torch.float16)
    else:
        image_tokens = model.encode_context(batch.context, batch.context_mask).half().cpu()  # (n, k, N_v, D_v)
    text_tokens = text_mask = None
    if model.text_encoder is not None:
        text = model.encode_prompts(batch.prompts, device)
        if text is None:  # every prompt of this chunk is empty: zero tokens, all masked
            length, dim = model.tokenizer.max_length, model.text_encoder.config.dim
            text = (torch.zeros(len(seeds), length, dim), torch.zeros(len(seeds), length, dtype=torch.bool))
        text_tokens, text_mask = text[0].half().cpu(), text[1].cpu()
    context_latents = None
    if model.config.context.learns_tokens:
        context_latents = encode_context_images(model.encode_images, batch.context, batch.context_mask)
        context_latents = context_latents.half().cpu()  # (n, k, C, h, w)
    pair_sources = pair_targets = None
    if model.reads_pairs:
        pair_sources = _to_bytes(torch.stack([world.context_sources(seed, k=k) for seed in seeds]))  # (n, k, 3, H, W)
        pair_targets = _to_bytes(batch.context)
    if bar is not None:
        bar.update(len(seeds))
    return (latents, queries, image_tokens, text_tokens, text_mask, context_latents, pair_sources, pair_targets,
            class_shares)


def _to_bytes(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 value * 255 on the CPU (the worlds' images are 8-bit, so nothing is lost)."""
    return (images * 255).round().to(torch.uint8).cpu()


def _trim_text(groups: dict[int, EpisodeGroup]) -> dict[int, EpisodeGroup]:
    """Drop trailing token positions that are padding in every pooled prompt (they are masked anyway)."""
    masks = [g.text_mask for g in groups.values() if g.text_mask is not None]
    if not masks:
        return groups
    used = torch.cat(masks).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    for group in groups.values():
        group.text_tokens = group.text_tokens[:, :length].contiguous()  # (n, L, D) -> (n, L_used, D)
        group.text_mask = group.text_mask[:, :length].contiguous()
    return groups


def _pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, L, D) tokens and (n, L) mask -> length ``length`` >= L, the new positions zero and masked out."""
    extra = length - tokens.shape[1]
    if extra == 0:
        return tokens, mask
    return (torch.cat([tokens, tokens.new_zeros(tokens.shape[0], extra, tokens.shape[2])], dim=1),
            torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1))


class PoolRefresher:
    """Replaces ``per_step`` episodes of every k group of a pool at every training step with never-seen ones.

    Group j (the j-th of ``k_choices``) of n episodes takes its w-th new episode (w = 0, 1, 2, ...) into slot w mod n,
    a window that rotates through the group, and that episode has seed ``FRESH_SEED_BASE + w * len(k_choices) + j``:
    no seed repeats, in any group. Step s writes w = w0 + s * m ... w0 + (s + 1) * m - 1, where w0 = ``first_write``
    is 0 except in a run that continues another (it starts after the other's writes). So the pool at any step is a
    function of the step alone, and :meth:`catch_up` rebuilds it in one pass when a run resumes.
    """

    def __init__(self, pool: EpisodePool, model: ContextDiffusionModel, world, per_step: int, first_write: int = 0):
        smallest = min(len(group) for group in pool.groups.values())
        if not 1 <= per_step <= smallest:
            raise ValueError(f"fresh episodes per step and group must be in [1, {smallest}] (the smallest k group of "
                             f"the pool), got {per_step}.")
        self.pool, self.model, self.world, self.per_step = pool, model, world, per_step
        self.first_write = first_write

    def seed(self, group: int, write: int) -> int:
        return FRESH_SEED_BASE + write * len(self.pool.k_choices) + group

    def _write(self, group: int, k: int, writes: list[int], bar=None) -> None:
        episodes = self.pool.groups[k]
        fresh = encode_episodes(self.model, self.world, [self.seed(group, w) for w in writes], k, bar)
        episodes.write(torch.tensor([w % len(episodes) for w in writes]), fresh)

    def refresh(self, step: int) -> None:
        """Step ``step``'s new episodes: every group's next ``per_step`` slots."""
        writes = list(range(self.first_write + step * self.per_step, self.first_write + (step + 1) * self.per_step))
        for group, k in enumerate(self.pool.k_choices):
            self._write(group, k, writes)

    def catch_up(self, step: int, progress: bool = True) -> None:
        """Bring a freshly built pool to its state at the start of ``step`` (after the refreshes of steps < step)."""
        done = self.first_write + step * self.per_step  # writes made into each group so far
        bar = tqdm(total=sum(min(done, len(g)) for g in self.pool.groups.values()), desc="refreshing the pool",
                   disable=not progress or done == 0)
        for group, k in enumerate(self.pool.k_choices):
            n = len(self.pool.groups[k])
            # slot j last received write w_j = (done - 1) - ((done - 1 - j) mod n), if that is >= 0
            latest = [(done - 1) - ((done - 1 - j) % n) for j in range(n)]
            writes = [w for w in latest if w >= 0]
            if writes:
                self._write(group, k, writes, bar)
        bar.close()

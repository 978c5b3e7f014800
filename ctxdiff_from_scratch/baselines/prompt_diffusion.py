"""A Prompt-Diffusion-style baseline: the visual context as example pairs in the query adapter, text-only attention.

Prompt Diffusion (Wang et al. 2023, "In-Context Learning Unlocked for Diffusion Models") conditions a ControlNet on
one example pair (source s, target y) and a query q. The pair is concatenated on channels, [s ; y] (6 channels for
RGB images), encoded by its own stack of convolutions ending in a zero conv, and *summed* with the query's hint
features where ControlNet adds its condition, after the input conv of the trainable copy:

    c = H_q(q) + H_p([s ; y])                                     added to conv_in(x_t) in E_copy
    y_skip_i = skip_i + s * Z_i(E_copy(x_t, c, t, [h^c])_skip_i)   (ControlNet Eq. 2, see adapter.py)

The prompt reaches the UNet through cross-attention only, and nothing else does: the keys are [null ; h^c], never the
visual tokens h^V of Context Diffusion's Eq. 3. So the context can steer the image only through the adapter's
convolutions, which is what the paper's Table 2 compares (Context Diffusion uses its context where Prompt Diffusion
cannot).

Prompt Diffusion reads one pair. Given k pairs ("the same number of pairs' worth of information" as a model that sees
k context images), this baseline encodes each pair and takes the *mean* of the k pair features,
H_p = 1/k sum_j H_p([s_j ; y_j]): it does not depend on the pairs' order, and its scale does not grow with k, so a
model trained on one pair sees features of the same size when given three.

Every part reuses the adapter's: ``PairAdapter`` is a ``QueryAdapter`` whose hint module also adds the pair features
(``PairHint``), ``PairDenoiser`` a ``Denoiser`` with text-only keys, ``PairDiffusionModel`` a
``ContextDiffusionModel`` (same frozen parts, ``save_pretrained`` / ``from_pretrained``) that encodes pairs.
Dropping the context for classifier-free guidance (``drop_context``) drops the pairs: a sample without pairs gets
exactly the query's hint, as one whose pairs were dropped.

The data: ShapesWorld and GlyphWorld episodes give the k context *targets*; ``world.context_sources(seed, task, k)``
gives the source of each, and :func:`episode_pairs` batches both.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from ..adapter import HintEncoder, QueryAdapter
from ..config import AdapterConfig, UNetConfig
from ..context import combine_context_tokens, encode_context_images
from ..data import EpisodeBatch, collate_episodes
from ..model import Conditions, ContextDiffusionModel, Denoiser, FrozenParts, ModelConfig


class PairHint(nn.Module):
    """The adapter's hint c = H_q(q) + H_p: the query's hint features plus the pair features of the current call.

    ``QueryAdapter.forward`` computes ``self.hint(query)`` and adds it after the trainable copy's input conv; this
    module makes that sum include the pairs, which ``PairAdapter.forward`` hands it for the duration of one call
    (:meth:`adding`). Both encoders end in a zero conv, so c is exactly 0 at initialisation.
    """

    def __init__(self, query_encoder: HintEncoder, pair_encoder: HintEncoder):
        super().__init__()
        self.query_encoder, self.pair_encoder = query_encoder, pair_encoder
        self._pair_features: torch.Tensor | None = None

    @contextlib.contextmanager
    def adding(self, pair_features: torch.Tensor | None) -> Iterator[None]:
        """Within this block, ``forward`` adds ``pair_features`` (B, C, h, w) (None: no pair in the batch)."""
        self._pair_features = pair_features
        try:
            yield
        finally:
            self._pair_features = None

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        features = self.query_encoder(query)  # (B, C_img, H, W) -> (B, C, h, w)
        # c = H_q(q) + mean_j H_p([s_j ; y_j])
        return features if self._pair_features is None else features + self._pair_features


class PairAdapter(QueryAdapter):
    """A query adapter that also reads k example pairs (source, target) per sample, Prompt Diffusion's way.

    >>> adapter = PairAdapter.from_unet(unet, AdapterConfig(downsample_factor=4))
    >>> down, mid = adapter(x_t, t, query, tokens, token_mask, pair_sources, pair_targets, pair_mask)
    >>> out = unet(x_t, t, tokens, token_mask, down_residuals=down, mid_residual=mid)
    """

    def __init__(self, unet_config: UNetConfig, config: AdapterConfig | None = None):
        super().__init__(unet_config, config)
        # H_p reads [s ; y]: twice the query's channels, otherwise the query's hint encoder (zero conv last)
        pair_config = dataclasses.replace(self.config, image_channels=2 * self.config.image_channels)
        self.hint = PairHint(self.hint, HintEncoder(pair_config, unet_config.base_channels))

    def pair_features(self, pair_sources: torch.Tensor, pair_targets: torch.Tensor, pair_mask: torch.Tensor
                      ) -> torch.Tensor | None:
        """H_p = 1/k_b sum_j m_bj H_p([s_bj ; y_bj]) over the real pairs of each sample -> (B, C, h, w).

        pair_sources, pair_targets: (B, k, C_img, H, W); pair_mask: (B, k) bool, True on real pairs. A sample without
        a real pair gets zeros; None when the batch holds no real pair at all.
        """
        if pair_sources.shape != pair_targets.shape:
            raise ValueError(f"pair_sources {tuple(pair_sources.shape)} and pair_targets {tuple(pair_targets.shape)} "
                             "must have the same shape (B, k, 3, H, W): one source per context image.")
        pairs = torch.cat([pair_sources, pair_targets], dim=2)  # 2 x (B, k, C_img, H, W) -> (B, k, 2 C_img, H, W)
        features = encode_context_images(self.hint.pair_encoder, pairs, pair_mask)  # -> (B, k, C, h, w), real only
        if features is None:
            return None
        batch, k, channels, height, width = features.shape
        # the same masked mean as the context tokens' "mean" combine, over k: (B, k, C, h*w) -> (B, C, h*w)
        mean, _ = combine_context_tokens(features.flatten(3), pair_mask, mode="mean")
        return mean.view(batch, channels, height, width)  # (B, C, h*w) -> (B, C, h, w)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, query: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor | None, pair_sources: torch.Tensor, pair_targets: torch.Tensor,
                pair_mask: torch.Tensor, conditioning_scale: float | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``QueryAdapter.forward`` with the pairs' features added to the query's hint. Returns (down, mid)."""
        if pair_sources.ndim != 5 or pair_sources.shape[0] != query.shape[0] or \
                pair_sources.shape[2:] != query.shape[1:]:
            raise ValueError(f"pair_sources must be (B, k, {', '.join(map(str, query.shape[1:]))}) for a query of "
                             f"shape {tuple(query.shape)}, got {tuple(pair_sources.shape)}; stack each sample's k "
                             "pairs along dim 1, at the query's size.")
        with self.hint.adding(self.pair_features(pair_sources, pair_targets, pair_mask)):
            return super().forward(x_t, t, query, tokens, token_mask, conditioning_scale)


@dataclass
class PairConditions(Conditions):
    """``Conditions`` plus k example pairs per sample; ``image_tokens`` and ``context_mask`` stay None.

    pair_sources, pair_targets: (B, k, 3, H, W) in [0, 1], the sources (e.g. segmentation maps) and targets (the
    context images) of the pairs; pair_mask: (B, k) bool, True on real pairs.

    Dual guidance decides from ``guidance.has_context``, which counts these pairs as the context.
    """

    pair_sources: torch.Tensor = field(kw_only=True)
    pair_targets: torch.Tensor = field(kw_only=True)
    pair_mask: torch.Tensor = field(kw_only=True)

    @classmethod
    def from_conditions(cls, cond: Conditions, pair_sources: torch.Tensor, pair_targets: torch.Tensor,
                        pair_mask: torch.Tensor | None = None) -> "PairConditions":
        """``cond``'s prompt and query with these pairs (``pair_mask`` None: all real); its visual tokens dropped."""
        if pair_mask is None:
            pair_mask = torch.ones(pair_targets.shape[:2], dtype=torch.bool, device=pair_targets.device)
        if pair_mask.dtype != torch.bool or pair_mask.shape != pair_targets.shape[:2]:
            raise ValueError(f"pair_mask must be a bool tensor of shape {tuple(pair_targets.shape[:2])} (B, k), got "
                             f"{pair_mask.dtype} {tuple(pair_mask.shape)}.")
        return cls(cond.text_tokens, cond.text_mask, None, None, cond.query, pair_sources=pair_sources,
                   pair_targets=pair_targets, pair_mask=pair_mask)

    def _map(self, fn) -> "PairConditions":
        # Conditions._map rebuilds a plain Conditions; keep the class and the pairs (so .to and .repeat keep them)
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if getattr(self, f.name) is not None})


class PairDenoiser(Denoiser):
    """The trained part of the baseline: conditioner (text keys only), UNet, and the pair-reading query adapter.

    ``forward`` has ``Denoiser.forward``'s signature, so the Eq. 2 loss (``train.diffusion_loss``) and the samplers
    call it unchanged, with ``PairConditions`` instead of ``Conditions``.
    """

    def __init__(self, config: ModelConfig):
        if config.adapter is None:
            raise ValueError("the Prompt-Diffusion-style baseline reads its context pairs in the query adapter: "
                             "build its ModelConfig with an AdapterConfig (ModelConfig.from_parts(..., adapter=True)).")
        super().__init__(dataclasses.replace(config, adapter=None))
        self.config = config
        self.adapter = PairAdapter(config.unet, config.adapter)
        # The keys are [null ; h^c]: visual tokens are never projected. Frozen, so that neither the optimiser nor
        # DistributedDataParallel sees a trainable parameter without gradient.
        self.conditioner.visual_proj.requires_grad_(False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: PairConditions,
                drop_prompt: torch.Tensor | None = None, drop_context: torch.Tensor | None = None,
                conditioning_scale: float | None = None) -> torch.Tensor:
        """x_t (B, C, h, w), t (B,); drop_context (B,) bool removes a sample's pairs, drop_prompt its prompt."""
        if not isinstance(cond, PairConditions):
            raise TypeError(f"the Prompt-Diffusion-style denoiser reads PairConditions, got {type(cond).__name__}; "
                            "build them with PairDiffusionModel.encode_pair_conditions or "
                            "PairConditions.from_conditions(cond, pair_sources, pair_targets).")
        tokens, token_mask = self.conditioner(cond.text_tokens, cond.text_mask, drop_prompt=drop_prompt,
                                              drop_context=drop_context,
                                              batch_size=x_t.shape[0])  # -> (B, 1 + N_c, D_c): no visual tokens
        pair_mask = cond.pair_mask if drop_context is None else cond.pair_mask & ~drop_context[:, None]  # (B, k)
        down, mid = self.adapter(x_t, t, cond.query, tokens, token_mask, cond.pair_sources, cond.pair_targets,
                                 pair_mask, conditioning_scale=conditioning_scale)
        return self.unet(x_t, t, tokens, token_mask, down_residuals=down, mid_residual=mid)


class PairDiffusionModel(ContextDiffusionModel):
    """The baseline on the same frozen parts as the shipped model: ``ContextDiffusionModel`` with a ``PairDenoiser``.

    >>> model = PairDiffusionModel(config, FrozenParts.load("data/checkpoints/shapes"))
    >>> cond = model.encode_pair_conditions(query, pair_sources, pair_targets, prompts=prompts)
    >>> out = model.predict(z_t, t, cond)
    """

    reads_pairs = True

    def __init__(self, config: ModelConfig, parts: FrozenParts):
        config = dataclasses.replace(config, baseline="prompt-diffusion")  # from_pretrained then rebuilds this class
        super().__init__(config, parts)
        self.denoiser = PairDenoiser(config).to(self.device)
        self.train(False)

    @torch.no_grad()
    def encode_conditions(self, query: torch.Tensor, context: torch.Tensor | None = None,
                          context_mask: torch.Tensor | None = None, prompts: list[str] | None = None,
                          context_sources: torch.Tensor | None = None) -> PairConditions:
        """``ContextDiffusionModel.encode_conditions`` for pairs: context (B, k, 3, H, W) holds the pairs' targets,
        context_sources (B, k, 3, H, W) their sources (``world.context_sources``); no context gives k = 0 pairs."""
        if context is None or context.shape[1] == 0:
            empty = query.new_zeros(query.shape[0], 0, *query.shape[1:])  # (B, 0, 3, H, W): no pair
            return self.encode_pair_conditions(query, empty, empty, prompts=prompts)
        if context_sources is None or context_sources.shape != context.shape:
            raise ValueError(f"the Prompt-Diffusion-style baseline reads example pairs: pass context_sources of the "
                             f"context's shape {tuple(context.shape)}, the source view of each context image (e.g. "
                             f"world.context_sources(seed, task, k)), got "
                             f"{None if context_sources is None else tuple(context_sources.shape)}.")
        return self.encode_pair_conditions(query, context_sources, context, context_mask, prompts)

    @torch.no_grad()
    def encode_pair_conditions(self, query: torch.Tensor, pair_sources: torch.Tensor, pair_targets: torch.Tensor,
                               pair_mask: torch.Tensor | None = None, prompts: list[str] | None = None
                               ) -> PairConditions:
        """The frozen encoders' prompt tokens and the raw pairs: query (B, 3, H, W), pair_sources and pair_targets
        (B, k, 3, H, W) in [0, 1], pair_mask (B, k) bool (None: all real), prompts B strings or None."""
        return PairConditions.from_conditions(super().encode_conditions(query, prompts=prompts), pair_sources,
                                              pair_targets, pair_mask)


def episode_pairs(world, seeds: Sequence[int], task: str | None, k: int) -> tuple[EpisodeBatch, torch.Tensor]:
    """The episodes ``seeds`` of ``world`` (ShapesWorld or GlyphWorld) batched, and the source of every context image:
    (batch, sources (B, k, 3, H, W)); ``batch.context`` holds the pairs' targets."""
    batch = collate_episodes([world.episode(seed, task=task, k=k) for seed in seeds])
    sources = torch.stack([world.context_sources(seed, task=task, k=k) for seed in seeds])  # B x (k, 3, H, W)
    return batch, sources

"""Dual classifier-free guidance: one scale for the visual context, one for the prompt (paper Sec. 3.3).

Classifier-free guidance (Ho & Salimans 2022) extrapolates from a less-conditioned prediction towards a more-conditioned
one. With two conditions it is applied twice, nested, as InstructPix2Pix (Brooks et al. 2023, eq. 3) does; the query
map is always present:

    eps~ = eps(0, 0) + s_c (eps(c, 0) - eps(0, 0)) + s_p (eps(c, p) - eps(c, 0))

where eps(c, p) sees context and prompt, eps(c, 0) the context only and eps(0, 0) neither. s_c = s_p = 1 gives the
plain conditional prediction eps(c, p); s_c = s_p = 0 the unconditional one.

"eps" here is whatever the network outputs, noise or velocity: guidance is a linear combination with weights summing to
1, and both targets are linear in the network output at a fixed x_t (v = sqrt(ab) eps - sqrt(1 - ab) x_0, with x_0 a
linear function of x_t and eps), so guiding v is the same as guiding the noise it implies.

Only the evaluations that matter are run, batched into one forward pass of (number needed) x B. The three terms have
weights w(0,0) = 1 - s_c, w(c,0) = s_c - s_p and w(c,p) = s_p. A condition absent from the whole batch (no prompt
tokens, or k = 0) makes terms identical -- without a prompt eps(c, p) = eps(c, 0); without context eps(c, 0) =
eps(0, 0) and eps(c, p) = eps(0, p) -- so their weights are merged, and a term whose weight is 0 is skipped. Examples:
s_c = s_p = 1 runs one forward (eps(c, p)); s_c = s_p (the pipeline's default 3, 3) runs two, since eps(c, 0) cancels;
s_p = 0 runs two; without a prompt two, or one when s_c is 0 or 1; with neither condition one.
"""
from __future__ import annotations

from typing import Protocol

import torch

# A term of the guidance sum: (sees the context, sees the prompt).
Term = tuple[bool, bool]


class Predictor(Protocol):
    """What guidance needs from a model: ``ContextDiffusionModel.predict``."""

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond, drop_prompt: torch.Tensor | None = None,
                drop_context: torch.Tensor | None = None) -> torch.Tensor: ...


def has_context(cond) -> bool:
    """True when some sample of the batch has at least one real context image (or example pair)."""
    if getattr(cond, "pair_mask", None) is not None:  # baselines.prompt_diffusion.PairConditions
        return bool(cond.pair_mask.any())
    if cond.image_tokens is None or cond.image_tokens.shape[1] == 0:
        return False
    return cond.context_mask is None or bool(cond.context_mask.any())


def has_prompt(cond) -> bool:
    """True when some sample of the batch has a (non-empty) prompt."""
    if cond.text_tokens is None or cond.text_tokens.shape[1] == 0:
        return False
    return cond.text_mask is None or bool(cond.text_mask.any())


def guidance_weights(scale_context: float, scale_prompt: float, context: bool = True, prompt: bool = True
                     ) -> dict[Term, float]:
    """The non-zero weight of each distinct prediction in the dual guidance sum (see the module docstring).

    context / prompt: whether that condition exists at all in the batch; absent ones merge identical terms.
    The weights always sum to 1.
    """
    # eps~ = (1 - s_c) eps(0,0) + (s_c - s_p) eps(c,0) + s_p eps(c,p)
    terms = {(False, False): 1.0 - scale_context, (True, False): scale_context - scale_prompt,
             (True, True): scale_prompt}
    weights: dict[Term, float] = {}
    for (use_context, use_prompt), weight in terms.items():
        term = (use_context and context, use_prompt and prompt)
        weights[term] = weights.get(term, 0.0) + weight
    return {term: weight for term, weight in weights.items() if weight != 0.0}


def dual_guidance(model: Predictor, x_t: torch.Tensor, t: torch.Tensor, cond, scale_context: float,
                  scale_prompt: float) -> torch.Tensor:
    """The guided model output eps~ at (x_t, t) for conditions ``cond``, in one batched forward pass.

    x_t: (B, C, h, w); t: (B,) long; cond: ``Conditions`` for the same B samples (``cond.repeat(n)`` stacks n
    copies of it along the batch). Returns (B, C, h, w).
    """
    weights = guidance_weights(scale_context, scale_prompt, has_context(cond), has_prompt(cond))
    terms = list(weights)
    n, batch = len(terms), x_t.shape[0]
    # one (drop_context, drop_prompt) flag per copy of the batch
    drop_context = torch.tensor([not c for c, _ in terms], device=x_t.device).repeat_interleave(batch)  # (n*B,)
    drop_prompt = torch.tensor([not p for _, p in terms], device=x_t.device).repeat_interleave(batch)  # (n*B,)
    out = model.predict(torch.cat([x_t] * n), torch.cat([t] * n), cond.repeat(n),  # -> (n*B, C, h, w)
                        drop_prompt=drop_prompt, drop_context=drop_context)
    out = out.view(n, batch, *out.shape[1:])  # (n*B, C, h, w) -> (n, B, C, h, w)
    # eps~ = sum_term w_term eps(term)
    return sum(weight * out[i] for i, weight in enumerate(weights.values()))


def guided_model_fn(model: Predictor, cond, scale_context: float, scale_prompt: float):
    """``model_fn(x_t, t)`` for the samplers: the dual-guided prediction for fixed conditions."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return dual_guidance(model, x_t, t, cond, scale_context, scale_prompt)

    return model_fn

"""Dual classifier-free guidance: the identities of the formula, the skipping of needless evaluations, batching."""
import pytest
import torch

from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.guidance import dual_guidance, guidance_weights, has_context, has_prompt

from tiny_model import SIZE, tiny_model

TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def inputs(model):
    """x_t (2, 4, 8, 8), t (2,) and the conditions of two ShapesWorld test episodes with k = 2 and prompts."""
    world = ShapesWorld("test", size=SIZE)
    episodes = [world.episode(seed, task="edge2img", k=2) for seed in range(2)]
    cond = model.encode_conditions(torch.stack([e.query for e in episodes]), torch.stack([e.context for e in episodes]),
                                   prompts=[e.prompt for e in episodes])
    x_t = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    return x_t, torch.tensor([500, 900]), cond


def three_predictions(model, x_t, t, cond):
    """eps(0, 0), eps(c, 0), eps(c, p), each from its own forward pass."""
    return (model.predict(x_t, t, cond, drop_prompt=True, drop_context=True),
            model.predict(x_t, t, cond, drop_prompt=True, drop_context=False),
            model.predict(x_t, t, cond, drop_prompt=False, drop_context=False))


def test_the_three_predictions_differ(model, inputs):
    # otherwise every identity below would hold trivially
    u, c, cp = three_predictions(model, *inputs)
    assert (u - c).abs().max() > 1e-3 and (c - cp).abs().max() > 1e-3


def test_scales_one_give_the_conditional_prediction(model, inputs):
    x_t, t, cond = inputs
    assert torch.allclose(dual_guidance(model, x_t, t, cond, 1.0, 1.0), model.predict(x_t, t, cond), atol=TOL)


def test_scales_zero_give_the_unconditional_prediction(model, inputs):
    x_t, t, cond = inputs
    unconditional = model.predict(x_t, t, cond, drop_prompt=True, drop_context=True)
    assert torch.allclose(dual_guidance(model, x_t, t, cond, 0.0, 0.0), unconditional, atol=TOL)


@pytest.mark.parametrize("s_c, s_p", [(3.0, 3.0), (2.0, 5.0), (0.0, 4.0), (1.5, 0.0), (1.0, 7.5), (-0.5, 1.0)])
def test_batched_guidance_matches_the_formula(model, inputs, s_c, s_p):
    u, c, cp = three_predictions(model, *inputs)
    # eps~ = eps(0,0) + s_c (eps(c,0) - eps(0,0)) + s_p (eps(c,p) - eps(c,0))
    expected = u + s_c * (c - u) + s_p * (cp - c)
    assert torch.allclose(dual_guidance(model, *inputs, s_c, s_p), expected, atol=1e-4)


def test_guidance_is_linear_in_the_scales(model, inputs):
    # eps~ is affine in (s_c, s_p): the midpoint of two scale pairs gives the midpoint of their outputs
    a, b = dual_guidance(model, *inputs, 1.0, 2.0), dual_guidance(model, *inputs, 5.0, 4.0)
    assert torch.allclose(dual_guidance(model, *inputs, 3.0, 3.0), (a + b) / 2, atol=1e-4)


class CountingModel:
    """Wraps a model and records the batch size of each forward pass and the drop flags it got."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def predict(self, x_t, t, cond, drop_prompt=None, drop_context=None):
        self.calls.append((x_t.shape[0], drop_context.tolist(), drop_prompt.tolist()))
        return self.model.predict(x_t, t, cond, drop_prompt=drop_prompt, drop_context=drop_context)


@pytest.mark.parametrize("s_c, s_p, copies", [(3.0, 3.0, 2), (2.0, 5.0, 3), (1.0, 1.0, 1), (0.0, 0.0, 1),
                                              (1.0, 4.0, 2), (3.0, 0.0, 2), (3.0, 1.0, 3)])
def test_one_forward_pass_with_only_the_needed_copies(model, inputs, s_c, s_p, copies):
    counting = CountingModel(model)
    dual_guidance(counting, *inputs, s_c, s_p)
    assert len(counting.calls) == 1 and counting.calls[0][0] == copies * 2


def test_absent_prompt_merges_terms_and_keeps_the_result(model, inputs):
    x_t, t, cond = inputs
    no_prompt = model.encode_conditions(cond.query, torch.zeros(2, 0, 3, SIZE, SIZE), prompts=None)
    with_context = type(cond)(None, None, cond.image_tokens, cond.context_mask, cond.query)
    assert not has_prompt(with_context) and has_context(with_context) and not has_context(no_prompt)
    counting = CountingModel(model)
    guided = dual_guidance(counting, x_t, t, with_context, 3.0, 5.0)
    # without a prompt eps(c, p) = eps(c, 0): eps~ = eps(0,0) + s_c (eps(c,0) - eps(0,0)), two copies
    u = model.predict(x_t, t, with_context, drop_context=True)
    c = model.predict(x_t, t, with_context)
    assert counting.calls[0][0] == 4 and torch.allclose(guided, u + 3.0 * (c - u), atol=1e-4)
    # nothing at all: one copy, the unconditional prediction whatever the scales
    counting.calls.clear()
    assert torch.allclose(dual_guidance(counting, x_t, t, no_prompt, 3.0, 5.0), model.predict(x_t, t, no_prompt),
                          atol=TOL)
    assert counting.calls[0][0] == 2


def test_empty_prompts_count_as_absent(model, inputs):
    x_t, t, cond = inputs
    empty = model.encode_conditions(cond.query, prompts=["", ""])
    assert not has_prompt(empty)


@pytest.mark.parametrize("s_c, s_p", [(3.0, 3.0), (0.0, 2.0), (1.0, 1.0), (-1.0, 0.5)])
def test_weights_sum_to_one_and_merge_absent_conditions(s_c, s_p):
    for context in (True, False):
        for prompt in (True, False):
            weights = guidance_weights(s_c, s_p, context, prompt)
            assert abs(sum(weights.values()) - 1.0) < 1e-12 and 0.0 not in weights.values()
            assert all((not c or context) and (not p or prompt) for c, p in weights)
    assert guidance_weights(s_c, s_p, context=False, prompt=False) == {(False, False): 1.0}

"""Visual tokens from k context images and the Eq. 3 token sequence [null ; h^c ; h^V]: combining, masks, dropping."""
import pytest
import torch

from ctxdiff_from_scratch.config import ContextConfig
from ctxdiff_from_scratch.context import ContextConditioner, combine_context_tokens, encode_context_images

MASK = torch.tensor([[True, True, True], [True, False, False], [False, False, False]])


def make_conditioner(combine: str = "sum") -> ContextConditioner:
    torch.manual_seed(0)
    return ContextConditioner(ContextConfig(visual_dim=6, context_dim=8, combine=combine))


def test_sum_and_mean_combine_only_the_real_slots():
    tokens = torch.randn(3, 3, 4, 6)
    summed, mask = combine_context_tokens(tokens, MASK, "sum")
    averaged, _ = combine_context_tokens(tokens, MASK, "mean")
    assert summed.shape == (3, 4, 6) and mask.shape == (3, 4)
    assert torch.allclose(summed[0], tokens[0].sum(0)) and torch.equal(summed[1], tokens[1, 0])
    assert torch.allclose(averaged[0], tokens[0].mean(0)) and torch.equal(averaged[1], tokens[1, 0])
    assert mask.tolist() == [[True] * 4, [True] * 4, [False] * 4]


@pytest.mark.parametrize("mode", ["sum", "mean", "concat"])
def test_padded_slots_change_nothing_even_when_they_hold_garbage(mode):
    tokens = torch.randn(3, 3, 4, 6)
    garbage = tokens.clone()
    garbage[~MASK] = float("nan")
    clean, clean_mask = combine_context_tokens(tokens, MASK, mode)
    dirty, dirty_mask = combine_context_tokens(garbage, MASK, mode)
    assert torch.equal(clean, dirty) and torch.equal(clean_mask, dirty_mask)


def test_concat_keeps_every_images_tokens_and_masks_padded_ones():
    tokens = torch.randn(3, 3, 4, 6)
    joined, mask = combine_context_tokens(tokens, MASK, "concat")
    assert joined.shape == (3, 12, 6) and mask.shape == (3, 12)
    assert torch.equal(joined[0, 4:8], tokens[0, 1])
    assert mask[1].tolist() == [True] * 4 + [False] * 8 and not mask[2].any()


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_sum_and_mean_do_not_depend_on_the_order_of_the_context_images(mode):
    conditioner = make_conditioner(mode)
    images, text = torch.randn(2, 5, 4, 6), torch.randn(2, 3, 8)
    order = torch.tensor([3, 0, 4, 1, 2])
    tokens, mask = conditioner(text, image_tokens=images)
    permuted, permuted_mask = conditioner(text, image_tokens=images[:, order])
    assert torch.allclose(tokens, permuted, atol=1e-6) and torch.equal(mask, permuted_mask)


def test_conditioner_layout_null_then_prompt_then_context():
    conditioner = make_conditioner()
    text, text_mask = torch.randn(3, 5, 8), torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 5])
    tokens, mask = conditioner(text, text_mask, torch.randn(3, 3, 4, 6), MASK)
    assert tokens.shape == (3, 1 + 5 + 4, 8) and mask.shape == (3, 10)
    assert mask[:, 0].all() and torch.equal(tokens[:, 0], conditioner.null_token.expand(3, 8))
    assert torch.equal(tokens[0, 1:6], text[0]) and torch.equal(mask[:, 1:6], text_mask)
    assert mask[:, 6:].tolist() == [[True] * 4, [True] * 4, [False] * 4]  # sample 2 has k = 0
    assert torch.all(tokens[1, 3:6] == 0) and torch.all(tokens[2, 6:] == 0)  # masked tokens are zeroed


def test_dropped_prompt_and_context_are_exactly_representable():
    conditioner = make_conditioner()
    text, images = torch.randn(2, 5, 8), torch.randn(2, 3, 4, 6)
    drop_prompt, drop_context = torch.tensor([True, False]), torch.tensor([False, True])
    tokens, mask = conditioner(text, image_tokens=images, drop_prompt=drop_prompt, drop_context=drop_context)
    other_tokens, other_mask = conditioner(torch.randn(2, 5, 8), image_tokens=torch.randn(2, 3, 4, 6),
                                           drop_prompt=drop_prompt, drop_context=drop_context)
    # Sample 0 lost its prompt, sample 1 its context: changing what was dropped changes nothing.
    assert torch.equal(tokens[0, :6], other_tokens[0, :6])
    assert torch.equal(tokens[1, 6:], other_tokens[1, 6:]) and torch.equal(mask, other_mask)
    assert mask[0, 1:6].sum() == 0 and mask[1, 6:].sum() == 0
    # Context dropped is the same as no context image at all (k = 0).
    no_context, no_context_mask = conditioner(text, image_tokens=images, context_mask=torch.zeros(2, 3).bool())
    dropped, dropped_mask = conditioner(text, image_tokens=images, drop_context=torch.tensor([True, True]))
    assert torch.equal(no_context, dropped) and torch.equal(no_context_mask, dropped_mask)


def test_missing_prompt_or_context_leave_only_the_null_token_and_the_rest():
    conditioner = make_conditioner()
    tokens, mask = conditioner(image_tokens=torch.randn(2, 0, 4, 6))  # no prompt, k = 0
    assert tokens.shape == (2, 5, 8) and mask.tolist() == [[True] + [False] * 4] * 2
    tokens, mask = conditioner(torch.randn(2, 3, 8))  # no context
    assert tokens.shape == (2, 4, 8) and mask.all()
    tokens, mask = conditioner(batch_size=3)  # neither: the null token alone
    assert torch.equal(tokens, conditioner.null_token.expand(3, 1, 8)) and mask.all()


def test_encode_context_images_runs_the_encoder_on_real_images_only():
    calls = []

    def encoder(images):  # (n, 3, H, W) -> (n, 2, 5): every entry holds the image's mean value
        calls.append(images.shape[0])
        return images.mean(dim=(1, 2, 3))[:, None, None].expand(-1, 2, 5)

    images = torch.arange(9, dtype=torch.float32)[:, None, None, None].expand(9, 3, 4, 4).reshape(3, 3, 3, 4, 4)
    tokens = encode_context_images(encoder, images, MASK)
    assert calls == [4] and tokens.shape == (3, 3, 2, 5)
    assert tokens[:, :, 0, 0].tolist() == [[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert encode_context_images(encoder, images, torch.zeros(3, 3, dtype=torch.bool)) is None and calls == [4]


def test_bad_inputs_are_explained():
    conditioner = make_conditioner()
    with pytest.raises(ValueError, match="ContextConfig.visual_dim"):
        conditioner(image_tokens=torch.randn(2, 3, 4, 7))
    with pytest.raises(ValueError, match="ContextConfig.context_dim"):
        conditioner(torch.randn(2, 5, 9))
    with pytest.raises(ValueError, match="drop_prompt must be a bool tensor of shape"):
        conditioner(torch.randn(2, 5, 8), drop_prompt=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="pass batch_size=B"):
        conditioner()
    with pytest.raises(ValueError, match=r"\(B, k, N_v, D_v\)"):
        combine_context_tokens(torch.randn(6, 4, 6), MASK)
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        combine_context_tokens(torch.randn(3, 3, 4, 6), MASK.float())
    with pytest.raises(ValueError, match="combine"):
        ContextConfig(combine="max")

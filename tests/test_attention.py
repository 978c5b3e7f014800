"""Multi-head self/cross-attention: agreement with an independent reference, key masks, stored probabilities."""
import pytest
import torch

from ctxdiff_from_scratch.attention import MultiHeadAttention, record_attention
from ctxdiff_from_scratch.config import UNetConfig
from ctxdiff_from_scratch.unet import UNet


def make_cross(seed: int = 0) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(query_dim=12, heads=3, head_dim=4, context_dim=10)


def test_self_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(query_dim=12, heads=3, head_dim=4)
    reference = torch.nn.MultiheadAttention(12, 3, bias=False, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.to_q.weight, ours.to_k.weight, ours.to_v.weight]))
        reference.out_proj.weight.copy_(ours.to_out.weight)
    x = torch.randn(2, 5, 12)
    key_mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    unmasked = reference(x, x, x, need_weights=False)[0] + ours.to_out.bias
    # torch's key_padding_mask is True where a key is *ignored*; ours is True where a key may be attended to.
    masked = reference(x, x, x, key_padding_mask=~key_mask, need_weights=False)[0] + ours.to_out.bias
    assert torch.allclose(ours(x), unmasked, atol=1e-5)
    assert torch.allclose(ours(x, key_mask=key_mask), masked, atol=1e-5)


def test_stored_probabilities_match_the_sdpa_path_and_respect_the_mask():
    attn = make_cross()
    x, context = torch.randn(2, 6, 12), torch.randn(2, 4, 10)
    key_mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    fast = attn(x, context, key_mask)
    attn.store_attention = True
    explicit = attn(x, context, key_mask)
    probs = attn.attention_probs
    assert torch.allclose(fast, explicit, atol=1e-6)
    assert probs.shape == (2, 3, 6, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, 6))
    assert torch.all(probs[0, :, :, 1] == 0) and torch.all(probs[0, :, :, 3] == 0)
    assert probs[1].min() > 0


@pytest.mark.parametrize("store", [False, True])
def test_masked_keys_change_nothing_and_all_masked_rows_read_nothing(store):
    attn = make_cross()
    attn.store_attention = store
    x, context = torch.randn(2, 6, 12), torch.randn(2, 4, 10)
    key_mask = torch.tensor([[True, False, True, False], [False, False, False, False]])
    out = attn(x, context, key_mask)
    scrambled = context.clone()
    scrambled[0, [1, 3]] = 100 * torch.randn(2, 10)
    scrambled[1] = torch.randn(4, 10)
    assert torch.equal(attn(x, scrambled, key_mask), out)
    # Sample 1 has no valid key: the attention output is zero, so the layer returns its output bias only.
    assert not torch.isnan(out).any()
    assert torch.equal(out[1], attn.to_out.bias.expand(6, 12))


def test_bad_inputs_are_explained():
    attn = make_cross()
    x, context = torch.randn(2, 6, 12), torch.randn(2, 4, 10)
    with pytest.raises(ValueError, match="cross-attention layer"):
        attn(x)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        attn(x, context, torch.ones(2, 4))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        attn(x, context, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected keys of shape \(2, N_k, 10\)"):
        attn(x, torch.randn(2, 4, 12))
    with pytest.raises(ValueError, match="self-attention layer"):
        MultiHeadAttention(12, 3, 4)(x, context)


def test_record_attention_collects_cross_attention_maps_of_a_unet_and_restores_the_flags():
    torch.manual_seed(0)
    unet = UNet(UNetConfig.profile("tiny"))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 500])
    tokens, mask = torch.randn(2, 5, 32), torch.tensor([[True] * 5, [True, True, False, False, False]])
    plain = unet(x, t, tokens, mask)
    with record_attention(unet) as maps:
        recorded = unet(x, t, tokens, mask)
    assert torch.allclose(plain, recorded, atol=1e-5)
    # tiny: attention at level 1 (one block down, two up) and in the middle block, all at 4x4 = 16 positions
    assert len(maps) == 4 and all(name.endswith("cross_attn") for name in maps)
    for probs in maps.values():
        assert probs.shape == (2, 2, 16, 5)
        assert torch.all(probs[1, :, :, 2:] == 0)
    layers = [m for m in unet.modules() if isinstance(m, MultiHeadAttention)]
    assert not any(m.store_attention for m in layers) and all(m.attention_probs is None for m in layers)
    with pytest.raises(ValueError, match="kind must be"):
        with record_attention(unet, kind="both"):
            pass

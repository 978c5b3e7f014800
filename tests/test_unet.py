"""The latent UNet with Eq. 3 cross-attention: shapes, context handling end to end, learning, configs and errors."""
import time

import pytest
import torch

from ctxdiff_from_scratch.checkpoint import config_from_dict, load_part, save_part
from ctxdiff_from_scratch.config import ContextConfig, UNetConfig
from ctxdiff_from_scratch.context import ContextConditioner
from ctxdiff_from_scratch.unet import UNet, timestep_embedding

N_V, D_V = 4, 6  # visual tokens per context image and their width


def make_model(combine: str = "sum", seed: int = 0) -> tuple[UNet, ContextConditioner]:
    torch.manual_seed(seed)
    config = UNetConfig.profile("tiny")
    return UNet(config), ContextConditioner(ContextConfig(visual_dim=D_V, context_dim=config.context_dim,
                                                          combine=combine))


def denoise(unet, conditioner, x, t, text, images, context_mask=None, **drops):
    tokens, mask = conditioner(text, image_tokens=images, context_mask=context_mask, **drops)
    return unet(x, t, tokens, mask)


@pytest.mark.parametrize("latent_channels, height, width", [(4, 8, 8), (4, 16, 16), (3, 4, 12), (8, 8, 6)])
def test_output_has_the_latent_shape_for_any_size_and_channel_count(latent_channels, height, width):
    torch.manual_seed(0)
    unet = UNet(UNetConfig.profile("tiny", latent_channels=latent_channels))
    x = torch.randn(2, latent_channels, height, width)
    out = unet(x, torch.tensor([0, 999]), torch.randn(2, 3, 32))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("combine", ["sum", "mean", "concat"])
def test_any_k_works_and_padded_context_slots_change_nothing(combine):
    unet, conditioner = make_model(combine)
    x, t, text = torch.randn(4, 4, 8, 8), torch.tensor([10, 200, 500, 900]), torch.randn(4, 3, 32)
    for k in (0, 1, 3, 5):
        assert denoise(unet, conditioner, x, t, text, torch.randn(4, k, N_V, D_V)).shape == x.shape
    # A batch mixing k = 0, 1, 3, 5, padded to k_max = 5 with garbage in the padded slots.
    ks = [0, 1, 3, 5]
    images = torch.randn(4, 5, N_V, D_V)
    context_mask = torch.arange(5)[None, :] < torch.tensor(ks)[:, None]  # (4, 5)
    padded = images.masked_fill(~context_mask[:, :, None, None], 7.0)
    batched = denoise(unet, conditioner, x, t, text, padded, context_mask)
    for i, k in enumerate(ks):
        alone = denoise(unet, conditioner, x[i:i + 1], t[i:i + 1], text[i:i + 1], images[i:i + 1, :k])
        assert torch.allclose(batched[i:i + 1], alone, atol=1e-5), f"sample with k={k} changed when padded"


@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_sum_and_mean_outputs_do_not_depend_on_context_order(combine):
    unet, conditioner = make_model(combine)
    x, t, text, images = torch.randn(2, 4, 8, 8), torch.tensor([5, 700]), torch.randn(2, 3, 32), torch.randn(2, 3,
                                                                                                          N_V, D_V)
    out = denoise(unet, conditioner, x, t, text, images)
    assert torch.allclose(out, denoise(unet, conditioner, x, t, text, images[:, [2, 0, 1]]), atol=1e-5)
    # ... while the context does matter (the check above is not vacuous).
    assert not torch.allclose(out, denoise(unet, conditioner, x, t, text, torch.randn(2, 3, N_V, D_V)), atol=1e-3)


def test_a_dropped_prompt_or_context_does_not_leak_into_the_output():
    unet, conditioner = make_model()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 600])
    text, images = torch.randn(2, 3, 32), torch.randn(2, 2, N_V, D_V)
    other_text, other_images = torch.randn(2, 3, 32), torch.randn(2, 2, N_V, D_V)
    both = torch.tensor([True, True])
    assert torch.equal(denoise(unet, conditioner, x, t, text, images, drop_prompt=both),
                       denoise(unet, conditioner, x, t, other_text, images, drop_prompt=both))
    assert torch.equal(denoise(unet, conditioner, x, t, text, images, drop_context=both),
                       denoise(unet, conditioner, x, t, text, other_images, drop_context=both))
    assert not torch.allclose(denoise(unet, conditioner, x, t, text, images),
                              denoise(unet, conditioner, x, t, other_text, images), atol=1e-3)


def test_a_tiny_model_overfits_one_batch():
    unet, conditioner = make_model()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 8, 8, generator=generator)
    t = torch.randint(0, 1000, (8,), generator=generator)
    text, images = torch.randn(8, 3, 32, generator=generator), torch.randn(8, 3, N_V, D_V, generator=generator)
    target = torch.randn(8, 4, 8, 8, generator=generator)
    optimizer = torch.optim.Adam([*unet.parameters(), *conditioner.parameters()], lr=3e-3)
    losses, start = [], time.perf_counter()
    for _ in range(150):
        loss = (denoise(unet, conditioner, x, t, text, images) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"overfit: loss {losses[0]:.3f} -> {losses[-1]:.4f} in {time.perf_counter() - start:.1f} s")
    assert losses[-1] <= 0.1 * losses[0]


def test_same_seed_same_model_and_a_checkpoint_round_trip(tmp_path):
    unet, conditioner = make_model(seed=3)
    twin, _ = make_model(seed=3)
    x, t, tokens = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.randn(2, 3, 32)
    assert torch.equal(unet(x, t, tokens), twin(x, t, tokens))
    save_part(tmp_path, "unet", unet, unet.config)
    state, config_dict, _ = load_part(tmp_path, "unet")
    config = config_from_dict(UNetConfig, config_dict)
    assert config == unet.config  # tuples survive the JSON round trip
    reloaded = UNet(config)
    reloaded.load_state_dict(state)
    assert torch.equal(reloaded(x, t, tokens), unet(x, t, tokens))


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 500]), 16)
    assert emb.shape == (3, 16)
    assert torch.equal(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))  # cos(0) = 1, sin(0) = 0
    assert not torch.allclose(emb[1], emb[2])
    assert torch.allclose(timestep_embedding(torch.tensor([0.5]), 16), (emb[0] + emb[1]) / 2, atol=0.2)


@pytest.mark.parametrize("name, millions", [("tiny", 0.24), ("cpu", 3.6), ("colab", 22.3), ("gpu", 88.1)])
def test_profiles_have_the_documented_sizes(name, millions):
    with torch.device("meta"):
        unet = UNet(UNetConfig.profile(name))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2 if millions < 1 else 1) == millions


@pytest.mark.parametrize("overrides, message", [
    (dict(attention_levels=(True,)), "one bool per level"),
    (dict(channel_mult=()), "non-empty tuple"),
    (dict(base_channels=18), "not divisible by norm_groups"),
    (dict(head_dim=24), "not divisible by head_dim"),
    (dict(base_channels=15, norm_groups=1, head_dim=5), "must be even"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(context_dim=0), "context_dim must be positive"),
    (dict(widht=3), "no field"),
])
def test_bad_configs_are_explained(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.profile("tiny", **overrides)


def test_unknown_profile_is_explained():
    with pytest.raises(ValueError, match="choose one of"):
        UNetConfig.profile("laptop")


def test_bad_inputs_are_explained():
    unet, _ = make_model()
    x, t, tokens = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match="latent_channels"):
        unet(torch.randn(2, 3, 8, 8), t, tokens)
    with pytest.raises(ValueError, match="not divisible by 2"):
        unet(torch.randn(2, 4, 7, 8), t, tokens)
    with pytest.raises(ValueError, match="one timestep per sample"):
        unet(x, torch.tensor([1, 2, 3]), tokens)
    with pytest.raises(ValueError, match="context_dim"):
        unet(x, t, torch.randn(2, 3, 31))
    with pytest.raises(ValueError, match="token_mask must be a bool tensor"):
        unet(x, t, tokens, torch.ones(2, 3))
    with pytest.raises(ValueError, match="down_residuals must be"):
        unet(x, t, tokens, down_residuals=[torch.zeros(2, 16, 8, 8)])
    with pytest.raises(ValueError, match="mid_residual must have shape"):
        unet(x, t, tokens, mid_residual=torch.zeros(2, 32, 8, 8))
    assert unet(x, torch.tensor(5), tokens).shape == x.shape  # a scalar t is broadcast

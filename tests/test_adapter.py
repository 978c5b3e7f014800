"""The ControlNet-style query adapter: exact no-op at initialisation, zero-conv gradients, freezing, scaling."""
import pytest
import torch

from ctxdiff_from_scratch.adapter import HintEncoder, QueryAdapter, freeze_base_encoder
from ctxdiff_from_scratch.config import AdapterConfig, UNetConfig
from ctxdiff_from_scratch.unet import UNet

FACTOR = 4  # image side / latent side in these tests: 32x32 query maps for 8x8 latents


def make_models(seed: int = 0) -> tuple[UNet, QueryAdapter]:
    torch.manual_seed(seed)
    unet = UNet(UNetConfig.profile("tiny"))
    # Train the base a little away from its initialisation, so the copy is not just "another random init".
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return unet, QueryAdapter.from_unet(unet, AdapterConfig(downsample_factor=FACTOR))


def make_inputs(batch: int = 3, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return dict(x_t=torch.randn(batch, 4, 8, 8, generator=generator),
                t=torch.randint(0, 1000, (batch,), generator=generator),
                tokens=torch.randn(batch, 5, 32, generator=generator),
                token_mask=torch.tensor([[True] * 5, [True, True, False, False, False], [True, False, True, True,
                                                                                          False]])[:batch])


def controlled(unet, adapter, query, inputs, **kwargs):
    down, mid = adapter(inputs["x_t"], inputs["t"], query, inputs["tokens"], inputs["token_mask"], **kwargs)
    return unet(inputs["x_t"], inputs["t"], inputs["tokens"], inputs["token_mask"], down_residuals=down,
                mid_residual=mid)


def base(unet, inputs):
    return unet(inputs["x_t"], inputs["t"], inputs["tokens"], inputs["token_mask"])


def test_at_initialisation_the_adapter_changes_nothing_for_any_query():
    unet, adapter = make_models()
    inputs = make_inputs()
    expected = base(unet, inputs)
    for seed in range(3):
        query = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(controlled(unet, adapter, query, inputs), expected)
    assert torch.equal(controlled(unet, adapter, torch.rand(3, 3, 32, 32), inputs, conditioning_scale=5.0), expected)


def test_from_unet_makes_an_independent_copy_of_the_encoder():
    unet, adapter = make_models()
    base_state = unet.encoder.state_dict()
    assert all(torch.equal(v, base_state[k]) for k, v in adapter.encoder.state_dict().items())
    with torch.no_grad():
        next(adapter.encoder.parameters()).add_(1.0)
    assert torch.equal(next(unet.encoder.parameters()), next(iter(base_state.values())))
    assert len(adapter.zero_convs) == len(adapter.encoder.skip_channels)


def test_zero_convs_get_gradients_first_and_the_copy_after_one_step():
    unet, adapter = make_models()
    inputs, query = make_inputs(), torch.rand(3, 3, 32, 32)
    target = torch.randn(3, 4, 8, 8)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)

    def backward():
        optimizer.zero_grad()
        (controlled(unet, adapter, query, inputs) - target).pow(2).mean().backward()

    def norm(module):
        return sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None)

    backward()
    # Step 0: d loss / d Z = (upstream grad) x (features) != 0, but everything behind a zero weight gets zero.
    assert all(conv.weight.grad.abs().sum() > 0 for conv in adapter.zero_convs)
    assert adapter.mid_zero_conv.weight.grad.abs().sum() > 0
    assert norm(adapter.encoder) == 0 and norm(adapter.hint) == 0
    optimizer.step()
    backward()
    # After one update the zero convs are non-zero, so gradients reach the trainable copy and the hint encoder.
    assert norm(adapter.encoder) > 0
    assert adapter.hint.net[-1].weight.grad.abs().sum() > 0


def test_frozen_base_encoder_does_not_change_while_the_rest_trains():
    unet, adapter = make_models()
    freeze_base_encoder(unet)
    inputs, query = make_inputs(), torch.rand(3, 3, 32, 32)
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    adapter_before = {name: p.detach().clone() for name, p in adapter.named_parameters()}
    optimizer = torch.optim.AdamW([*unet.parameters(), *adapter.parameters()], lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        loss = controlled(unet, adapter, query, inputs).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in unet.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed != name.startswith("encoder."), f"{name}: changed={changed}"
    assert all(not torch.equal(p, adapter_before[name]) for name, p in adapter.named_parameters()
               if name.startswith(("zero_convs", "mid_zero_conv")))
    assert not torch.equal(adapter.encoder.conv_in.weight, adapter_before["encoder.conv_in.weight"])


def test_conditioning_scale_multiplies_every_residual():
    unet, adapter = make_models()
    with torch.no_grad():  # as after training: the zero convs are no longer zero
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    inputs, query = make_inputs(), torch.rand(3, 3, 32, 32)
    args = (inputs["x_t"], inputs["t"], query, inputs["tokens"], inputs["token_mask"])
    down_1, mid_1 = adapter(*args)
    down_2, mid_2 = adapter(*args, conditioning_scale=2.0)
    assert all(torch.allclose(2 * a, b) for a, b in zip(down_1, down_2)) and torch.allclose(2 * mid_1, mid_2)
    assert all(r.abs().sum() > 0 for r in down_1)
    assert not torch.allclose(controlled(unet, adapter, query, inputs), base(unet, inputs), atol=1e-4)
    assert torch.equal(controlled(unet, adapter, query, inputs, conditioning_scale=0.0), base(unet, inputs))


@pytest.mark.parametrize("factor, size", [(1, 8), (2, 16), (8, 64)])
def test_hint_encoder_reaches_latent_resolution_and_starts_at_zero(factor, size):
    hint = HintEncoder(AdapterConfig(downsample_factor=factor), out_channels=16)
    out = hint(torch.rand(2, 3, size, size))
    assert out.shape == (2, 16, 8, 8) and torch.all(out == 0)


def test_bad_inputs_and_configs_are_explained():
    unet, adapter = make_models()
    inputs = make_inputs()
    with pytest.raises(ValueError, match="downsample_factor=4"):
        adapter(inputs["x_t"], inputs["t"], torch.rand(3, 3, 64, 64), inputs["tokens"], inputs["token_mask"])
    with pytest.raises(ValueError, match="power of two"):
        AdapterConfig(downsample_factor=6)
    with pytest.raises(ValueError, match="hint_channels must be positive"):
        AdapterConfig(hint_channels=0)

"""ContextDiffusionModel: condition encoding, what "no prompt" / "no context" mean, the query path, save/load."""
import pytest
import torch

from ctxdiff_from_scratch.model import ContextDiffusionModel, FrozenParts, ModelConfig

SIZE = 32  # the shared fixtures' images (conftest.py): 32x32 -> 4x8x8 latents


def make_model(parts, adapter: bool, seed: int = 0) -> ContextDiffusionModel:
    torch.manual_seed(seed)
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder,
                                    unet_profile="tiny", adapter=adapter)
    model = ContextDiffusionModel(config, parts)
    with torch.no_grad():  # move every weight off its initialisation, so zero convs and the null token matter
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def noisy(model, batch_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *model.latent_shape, generator=g), torch.randint(0, 1000, (batch_size,), generator=g)


def test_encode_conditions_shapes_and_masks(parts, batch):
    model = make_model(parts, adapter=True)
    prompts = ["", *batch.prompts[1:]]
    cond = model.encode_conditions(batch.query, batch.context, batch.context_mask, prompts)
    n_v, d_v = parts.image_encoder.config.grid ** 2, parts.image_encoder.config.dim
    assert cond.image_tokens.shape == (3, 3, n_v, d_v)
    assert torch.equal(cond.context_mask, batch.context_mask)
    assert (cond.image_tokens[~batch.context_mask] == 0).all()  # padded slots hold no tokens
    assert cond.text_tokens.shape[:2] == cond.text_mask.shape == (3, parts.tokenizer.max_length)
    assert not cond.text_mask[0].any() and cond.text_mask[1:].any(dim=1).all()  # "" is masked out entirely
    assert model.encode_images(batch.target).shape == (3, *model.latent_shape)
    assert model.decode_latents(torch.zeros(2, *model.latent_shape)).shape == (2, 3, SIZE, SIZE)
    repeated = cond.repeat(2)
    assert repeated.batch_size == 6 and torch.equal(repeated.image_tokens[3:], cond.image_tokens)


def test_empty_prompt_equals_dropped_prompt_and_k0_equals_dropped_context(parts, batch):
    model = make_model(parts, adapter=True)
    x, t = noisy(model, 3)
    prompts = list(batch.prompts)
    with_prompt = model.encode_conditions(batch.query, batch.context, batch.context_mask, prompts)
    empty = model.encode_conditions(batch.query, batch.context, batch.context_mask, [""] * 3)
    dropped = model.predict(x, t, with_prompt, drop_prompt=True)
    assert torch.allclose(model.predict(x, t, empty), dropped, atol=1e-5)
    assert not torch.allclose(model.predict(x, t, with_prompt), dropped, atol=1e-3)  # the prompt is read

    no_context = model.encode_conditions(batch.query, None, None, prompts)
    assert no_context.image_tokens is None
    assert torch.allclose(model.predict(x, t, no_context),
                          model.predict(x, t, with_prompt, drop_context=torch.ones(3, dtype=torch.bool)), atol=1e-5)


def test_padded_context_slot_changes_nothing(parts, world):
    model = make_model(parts, adapter=False)
    episode = world.episode(5, k=2)
    x, t = noisy(model, 1)
    query = episode.query[None]
    plain = model.encode_conditions(query, episode.context[None], prompts=[episode.prompt])
    junk = torch.cat([episode.context, torch.rand(1, 3, SIZE, SIZE)])[None]  # (1, 3, 3, H, W), last slot padding
    padded = model.encode_conditions(query, junk, torch.tensor([[True, True, False]]), prompts=[episode.prompt])
    assert torch.allclose(model.predict(x, t, plain), model.predict(x, t, padded), atol=1e-5)


def test_stage1_model_ignores_query_and_adapter_reads_it(parts, batch):
    x, t = noisy(model := make_model(parts, adapter=False), 3)
    cond = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    other = model.encode_conditions(1 - batch.query, batch.context, batch.context_mask, batch.prompts)
    assert torch.equal(model.predict(x, t, cond), model.predict(x, t, other))

    controlled = make_model(parts, adapter=True)
    assert not torch.allclose(controlled.predict(x, t, cond), controlled.predict(x, t, other), atol=1e-4)
    # conditioning_scale = 0 switches the query off: then the query makes no difference either
    assert torch.allclose(controlled.predict(x, t, cond, conditioning_scale=0.0),
                          controlled.predict(x, t, other, conditioning_scale=0.0))


def test_save_and_load_round_trip(parts, batch, tmp_path):
    model = make_model(parts, adapter=True)
    cond = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    x, t = noisy(model, 3)
    model.save_pretrained(tmp_path / "fp32")
    loaded = ContextDiffusionModel.from_pretrained(tmp_path / "fp32")
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded.predict(x, t, cond), model.predict(x, t, cond))

    model.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    half = ContextDiffusionModel.from_pretrained(tmp_path / "fp16")
    sizes = [(tmp_path / dtype / "denoiser.safetensors").stat().st_size for dtype in ("fp16", "fp32")]
    assert sizes[0] < 0.6 * sizes[1]
    assert torch.allclose(half.predict(x, t, cond), model.predict(x, t, cond), atol=0.05)


def test_glyph_like_world_without_text_encoder(tmp_path):
    parts = FrozenParts.untrained(SIZE, prompts=None)
    model = make_model(parts, adapter=True)
    query, context = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, 3, SIZE, SIZE)
    cond = model.encode_conditions(query, context, prompts=["", ""])
    assert cond.text_tokens is None and cond.image_tokens.shape[:2] == (2, 3)
    x, t = noisy(model, 2)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "text_encoder.json").exists()
    assert torch.equal(ContextDiffusionModel.from_pretrained(tmp_path).predict(x, t, cond), model.predict(x, t, cond))


def test_frozen_parts_stay_frozen_and_in_eval_mode(parts):
    model = make_model(parts, adapter=True)
    model.train()
    for part in (model.autoencoder, model.image_encoder, model.text_encoder):
        assert not part.training and not any(p.requires_grad for p in part.parameters())
    assert model.denoiser.training and all(p.requires_grad for p in model.denoiser.parameters())


def test_clear_errors(parts, batch):
    model = make_model(parts, adapter=True)
    with pytest.raises(ValueError, match="query must be"):
        model.encode_conditions(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="prompts must be a list of B=3"):
        model.encode_conditions(batch.query, prompts=["one prompt"])
    cond = model.encode_conditions(batch.query)
    with pytest.raises(ValueError, match="cond.repeat"):
        model.predict(torch.zeros(6, *model.latent_shape), 3, cond)
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder, unet_profile="tiny",
                                    latent_channels=8)
    with pytest.raises(ValueError, match="latent_channels=8"):
        ContextDiffusionModel(config, parts)

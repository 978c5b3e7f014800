"""The trainable context tokenizer (ContextConfig.tokenizer = "latents"): shapes, masks, what reaches Eq. 3,
training through it, saving, and stage 2 keeping it."""
import pytest
import torch

from ctxdiff_from_scratch.context_tokenizer import LatentTokenizer
from ctxdiff_from_scratch.data import collate_episodes
from ctxdiff_from_scratch.episode_cache import encode_episodes
from ctxdiff_from_scratch.model import ContextDiffusionModel, ModelConfig, save_frozen_parts
from ctxdiff_from_scratch.train import TrainConfig, build_model, main


def make_model(parts, tokenizer: str) -> ContextDiffusionModel:
    torch.manual_seed(0)
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder, unet_profile="tiny",
                                    adapter=True, tokenizer=tokenizer)
    return ContextDiffusionModel(config, parts)


def test_one_token_per_latent_position_zero_in_padded_slots_and_none_without_context():
    tokenizer = LatentTokenizer(latent_channels=4, grid=8, dim=24)
    latents = torch.randn(3, 2, 4, 8, 8)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    tokens = tokenizer(latents, mask)
    assert tokens.shape == (3, 2, 64, 24)
    assert (tokens[~mask] == 0).all() and (tokens[mask] != 0).any()
    assert tokenizer(latents, torch.zeros_like(mask)) is None
    # a token reads its neighbourhood (5x5 latent positions): changing the top-left corner leaves the far one alone
    changed = latents.clone()
    changed[:, :, :, 0, 0] += 1
    delta = (tokenizer(changed, mask) - tokens).norm(dim=-1)[1, 0].view(8, 8)  # (64,) -> (8, 8)
    assert delta[:3, :3].min() > 0 and delta[3:].abs().max() == 0 and delta[:, 3:].abs().max() == 0
    # the position embedding: equal latents at two positions give different tokens
    flat = tokenizer.tokenize(torch.zeros(1, 4, 8, 8))[0]  # (64, 24)
    assert not torch.allclose(flat[10], flat[20])
    with pytest.raises(ValueError, match="context latents"):
        tokenizer.tokenize(torch.zeros(2, 4, 4, 4))


def test_the_denoiser_reads_the_context_latents_and_dropping_removes_them(parts, batch):
    model = make_model(parts, "latents")
    cond = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    latent_shape = model.latent_shape
    assert cond.context_latents.shape == (3, 3, *latent_shape)
    assert (cond.context_latents[~batch.context_mask] == 0).all()
    assert torch.allclose(cond.context_latents[1, 2], model.encode_images(batch.context[1, 2:3])[0])
    assert model.denoiser.visual_tokens(cond).shape[:3] == (3, 3, latent_shape[1] * latent_shape[2])
    x = torch.randn(3, *latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 900])
    moved = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    moved.context_latents = cond.context_latents.flip(0)  # other samples' latents, the frozen tokens unchanged
    assert not torch.allclose(model.predict(x, t, cond), model.predict(x, t, moved))
    drop = torch.ones(3, dtype=torch.bool)
    assert torch.equal(model.predict(x, t, cond, drop_context=drop), model.predict(x, t, moved, drop_context=drop))
    no_context = model.encode_conditions(batch.query, None, prompts=batch.prompts)
    assert no_context.context_latents is None
    assert torch.equal(model.predict(x, t, no_context), model.predict(x, t, cond, drop_context=drop))
    cond.context_latents = None
    with pytest.raises(ValueError, match="tokenizes the context itself"):
        model.predict(x, t, cond)


def test_a_pool_for_the_tokenizer_keeps_latents_not_the_frozen_tokens_and_predicts_alike(parts, world):
    model = make_model(parts, "latents")
    seeds = [4, 5]
    group = encode_episodes(model, world, seeds, k=2)
    assert group.image_tokens.shape == (2, 2, 0, model.config.context.visual_dim)  # unread, so not computed
    assert group.context_latents.shape == (2, 2, *model.latent_shape)
    z0, pooled = group.batch(torch.arange(2), "cpu")
    episodes = collate_episodes([world.episode(seed, k=2) for seed in seeds])
    direct = model.encode_conditions(episodes.query, episodes.context, episodes.context_mask, episodes.prompts)
    x, t = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0)), torch.tensor([100, 800])
    # the pool stores fp16 latents: equal to the direct encoding up to that rounding (other latents move it ~1e-2)
    assert torch.allclose(model.predict(x, t, pooled), model.predict(x, t, direct), atol=1e-4)
    assert encode_episodes(make_model(parts, "frozen"), world, seeds, k=2).image_tokens.shape[2] > 0


def test_frozen_models_keep_no_latents(parts, batch):
    model = make_model(parts, "frozen")
    assert model.denoiser.context_tokenizer is None
    assert model.encode_conditions(batch.query, batch.context, batch.context_mask).context_latents is None


def test_training_updates_the_tokenizer_saves_it_and_stage_2_keeps_it(parts, tmp_path):
    folder = tmp_path / "parts"
    save_frozen_parts(parts, folder)
    main(["--profile", "tiny", "--parts", str(folder), "--out", str(tmp_path / "s1"), "--steps", "3",
          "--tokenizer", "latents"])
    stage1 = ContextDiffusionModel.from_pretrained(tmp_path / "s1")
    assert stage1.config.context.tokenizer == "latents"
    initial = make_model(parts, "latents").denoiser.context_tokenizer  # the same seed's initialisation
    trained = stage1.denoiser.context_tokenizer
    assert not torch.equal(trained.net[0].weight, initial.net[0].weight)  # the loss reached the tokenizer
    stage2 = build_model(TrainConfig.from_profile("tiny", stage=2, init=str(tmp_path / "s1"), out=str(tmp_path)))
    assert stage2.config.context.tokenizer == "latents"
    for a, b in zip(stage2.denoiser.context_tokenizer.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stage 2 keeps it"):
        build_model(TrainConfig.from_profile("tiny", stage=2, init=str(tmp_path / "s1"), out=str(tmp_path),
                                             tokenizer="frozen"))
    with pytest.raises(ValueError, match="unknown context tokenizer"):
        TrainConfig.from_profile("tiny", tokenizer="clip")

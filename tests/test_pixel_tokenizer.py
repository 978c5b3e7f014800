"""The trainable pixel tokenizer (ContextConfig.tokenizer "pixels" / "both"): shapes, masks, what reaches Eq. 3,
training through it, saving, and stage 2 keeping it."""
import pytest
import torch

from ctxdiff_from_scratch.data import ShapesWorld, collate_episodes
from ctxdiff_from_scratch.model import ContextDiffusionModel, FrozenParts, ModelConfig, save_frozen_parts
from ctxdiff_from_scratch.pixel_tokenizer import PixelTokenizer
from ctxdiff_from_scratch.train import TrainConfig, build_model, main

SIZE = 32  # tiny parts: 32x32 images -> a 4x4 grid of pixel tokens


@pytest.fixture(scope="module")
def world():
    return ShapesWorld("train", size=SIZE)


@pytest.fixture(scope="module")
def parts(world):
    return FrozenParts.untrained(SIZE, [world.styled_image(s)[1] for s in range(60)])


@pytest.fixture(scope="module")
def batch(world):
    return collate_episodes([world.episode(seed, k=k) for seed, k in zip(range(3), (1, 3, 2))])


def make_model(parts, tokenizer: str) -> ContextDiffusionModel:
    torch.manual_seed(0)
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder, unet_profile="tiny",
                                    adapter=True, tokenizer=tokenizer)
    return ContextDiffusionModel(config, parts)


def test_tokens_per_patch_zero_in_padded_slots_and_none_without_context(batch):
    tokenizer = PixelTokenizer(SIZE, dim=24)
    tokens = tokenizer(batch.context, batch.context_mask)
    assert tokens.shape == (3, 3, (SIZE // 8) ** 2, 24)  # one token per 8x8 patch
    assert (tokens[~batch.context_mask] == 0).all() and (tokens[batch.context_mask] != 0).any()
    assert tokenizer(batch.context, torch.zeros_like(batch.context_mask)) is None
    # a token reads its own neighbourhood: changing the top-left patch changes the top-left token, not the far one
    image = batch.context[:1, :1].clone()
    changed = image.clone()
    changed[..., :8, :8] = 1 - changed[..., :8, :8]
    one = torch.ones(1, 1, dtype=torch.bool)
    delta = (tokenizer(changed, one) - tokenizer(image, one)).norm(dim=-1)[0, 0]  # (g*g,)
    assert delta[0] > 0 and delta[-1] == 0  # the far corner's receptive field misses the change
    with pytest.raises(ValueError, match="multiple of 8"):
        PixelTokenizer(36, dim=8)
    with pytest.raises(ValueError, match="context images"):
        tokenizer.tokenize(torch.zeros(2, 3, 16, 16))


@pytest.mark.parametrize("tokenizer", ["pixels", "both"])
def test_the_denoiser_reads_the_context_pixels_and_dropping_removes_them(parts, batch, tokenizer):
    model = make_model(parts, tokenizer)
    cond = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    assert torch.equal(cond.context_images, batch.context)
    n_frozen, grid_tokens = parts.image_encoder.config.grid ** 2, (SIZE // 8) ** 2
    expected = grid_tokens + (n_frozen if tokenizer == "both" else 0)
    assert model.denoiser.visual_tokens(cond).shape[:3] == (3, 3, expected)
    x = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 900])
    other = batch.context.flip(0)  # other samples' context images, the frozen tokens unchanged
    moved = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    moved.context_images = other
    assert not torch.allclose(model.predict(x, t, cond), model.predict(x, t, moved))
    drop = torch.ones(3, dtype=torch.bool)
    assert torch.equal(model.predict(x, t, cond, drop_context=drop), model.predict(x, t, moved, drop_context=drop))
    no_context = model.encode_conditions(batch.query, None, prompts=batch.prompts)
    assert no_context.context_images is None
    assert torch.equal(model.predict(x, t, no_context), model.predict(x, t, cond, drop_context=drop))
    cond.context_images = None
    with pytest.raises(ValueError, match="tokenizes the context pixels itself"):
        model.predict(x, t, cond)


def test_frozen_models_keep_no_pixels(parts, batch):
    model = make_model(parts, "frozen")
    assert model.denoiser.pixel_tokenizer is None
    assert model.encode_conditions(batch.query, batch.context, batch.context_mask).context_images is None


def test_training_updates_the_tokenizer_saves_it_and_stage_2_keeps_it(world, parts, tmp_path):
    folder = tmp_path / "parts"
    save_frozen_parts(parts, folder)
    main(["--profile", "tiny", "--parts", str(folder), "--out", str(tmp_path / "s1"), "--steps", "3",
          "--tokenizer", "pixels"])
    stage1 = ContextDiffusionModel.from_pretrained(tmp_path / "s1")
    assert stage1.config.context.tokenizer == "pixels"
    initial = make_model(parts, "pixels").denoiser.pixel_tokenizer  # the same seed's initialisation
    trained = stage1.denoiser.pixel_tokenizer
    assert not torch.equal(trained.net[0].weight, initial.net[0].weight)  # the loss reached the tokenizer
    stage2 = build_model(TrainConfig.from_profile("tiny", stage=2, init=str(tmp_path / "s1"), out=str(tmp_path)))
    assert stage2.config.context.tokenizer == "pixels"
    for a, b in zip(stage2.denoiser.pixel_tokenizer.parameters(), trained.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stage 2 keeps it"):
        build_model(TrainConfig.from_profile("tiny", stage=2, init=str(tmp_path / "s1"), out=str(tmp_path),
                                             tokenizer="both"))
    with pytest.raises(ValueError, match="unknown context tokenizer"):
        TrainConfig.from_profile("tiny", tokenizer="clip")

"""The trainable context tokenizer (ContextConfig.tokenizer = "latents"): shapes, masks, what reaches Eq. 3,
training through it, saving, stage 2 keeping it, and the class head's auxiliary loss."""
import json
import math

import pytest
import torch

from ctxdiff_from_scratch.config import ContextConfig
from ctxdiff_from_scratch.context_tokenizer import LatentTokenizer
from ctxdiff_from_scratch.data import collate_episodes
from ctxdiff_from_scratch.data.shapes import NUM_PATCH_CLASSES, patch_class_shares
from ctxdiff_from_scratch.episode_cache import encode_episodes
from ctxdiff_from_scratch.model import ContextDiffusionModel, ModelConfig, save_frozen_parts
from ctxdiff_from_scratch.runlog import read_log
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


def test_patch_class_loss_is_the_soft_cross_entropy_over_real_context_images():
    torch.manual_seed(0)
    tokenizer = LatentTokenizer(latent_channels=4, grid=4, dim=16, patch_classes=3)
    latents = torch.randn(2, 2, 4, 4, 4)
    mask = torch.tensor([[True, False], [True, True]])
    shares = torch.softmax(torch.randn(2, 2, 16, 3), dim=-1)
    tokenizer(latents, mask)
    loss = tokenizer.patch_class_loss(mask, shares)
    log_probs = torch.log_softmax(tokenizer.class_head(tokenizer.tokenize(latents.flatten(0, 1))), -1)
    by_hand = -(shares.flatten(0, 1) * log_probs).sum(-1).mean(-1)  # (4, 16, 3) -> (4,): per context image
    assert torch.allclose(loss, by_hand[[0, 2, 3]].mean())  # slot (0, 1) is padding: not counted
    padded = latents.clone()
    padded[0, 1] = 100.0
    tokenizer(padded, mask)
    assert torch.equal(tokenizer.patch_class_loss(mask, shares), loss)
    # the loss teaches the head (and tokens) to name the patch: it falls when trained on fixed shares
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        tokenizer(latents, mask)
        tokenizer.patch_class_loss(mask, shares).backward()
        optimizer.step()
    tokenizer(latents, mask)
    assert tokenizer.patch_class_loss(mask, shares) < 0.9 * loss
    with pytest.raises(ValueError, match=r"must be \(B, k, 16, 3\)"):
        tokenizer.patch_class_loss(mask, shares[..., :2])
    with pytest.raises(ValueError, match="no class head"):
        LatentTokenizer(latent_channels=4, grid=4, dim=16).patch_class_loss(mask, shares)
    with pytest.raises(ValueError, match="needs a trainable tokenizer"):
        ContextConfig(patch_classes=7)


def test_a_pool_for_the_class_head_keeps_each_context_tokens_class_shares(parts, world):
    config = ModelConfig.from_parts(parts.autoencoder, parts.image_encoder, parts.text_encoder, unet_profile="tiny",
                                    adapter=True, tokenizer="latents", patch_classes=NUM_PATCH_CLASSES)
    model = ContextDiffusionModel(config, parts)
    group = encode_episodes(model, world, [4, 5, 6], k=2)
    grid = model.config.context.latent_side
    assert group.class_shares.shape == (3, 2, grid * grid, NUM_PATCH_CLASSES)
    shares = group.patch_class_shares(torch.tensor([1]), "cpu")[0]  # episode seed 5: (2, g*g, C)
    _, classes = world.labelled_episode(5, k=2)
    assert torch.equal(shares, patch_class_shares(torch.from_numpy(classes), grid))
    assert torch.allclose(shares.sum(-1), torch.ones(2, grid * grid))
    assert encode_episodes(make_model(parts, "latents"), world, [4], k=2).class_shares is None
    with pytest.raises(ValueError, match="keeps no patch class shares"):
        encode_episodes(make_model(parts, "latents"), world, [4], k=2).patch_class_shares(torch.tensor([0]), "cpu")


def test_training_with_the_patch_class_loss_logs_it_and_trains_the_head(parts, world, tmp_path):
    folder = tmp_path / "parts"
    save_frozen_parts(parts, folder)
    out = tmp_path / "cls"
    main(["--profile", "tiny", "--parts", str(folder), "--out", str(out), "--steps", "6", "--joint",
          "--tokenizer", "latents", "--patch-class-weight", "1", "--lr", "3e-3"])
    log = read_log(out / "train_log.csv")
    losses = log["patch_class_loss"]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[0] > 0.5 * math.log(NUM_PATCH_CLASSES)  # a cross-entropy near chance at the start, not a zero
    model = ContextDiffusionModel.from_pretrained(out)
    assert model.config.context.patch_classes == NUM_PATCH_CLASSES
    head = model.denoiser.context_tokenizer.class_head
    assert head is not None and head.weight.shape == (NUM_PATCH_CLASSES, model.config.context.visual_dim)
    # sampling never reads the head: the prediction is the same with it removed
    episode = collate_episodes([world.episode(2, k=2)])
    cond = model.encode_conditions(episode.query, episode.context, episode.context_mask, episode.prompts)
    x, t = torch.randn(1, *model.latent_shape), torch.tensor([500])
    before = model.predict(x, t, cond)
    model.denoiser.context_tokenizer.class_head = None
    assert torch.equal(model.predict(x, t, cond), before)
    for bad, match in (({"tokenizer": "frozen"}, "needs --tokenizer latents"),
                       ({"tokenizer": "latents", "world": "glyphs"}, "needs --tokenizer latents"),
                       ({"tokenizer": "latents", "stage": 2, "init": "x"}, "needs --tokenizer latents")):
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_profile("tiny", patch_class_weight=1.0, **bad)
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig.from_profile("tiny", tokenizer="latents", patch_class_weight=-1.0)
    # a run that started before the option existed resumes with it off, and refuses to switch it on
    state_file = out / "checkpoints" / "step_0000006" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["patch_class_weight"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="patch_class_weight: checkpoint 0.0 vs now 2.0"):
        main(["--profile", "tiny", "--out", str(out), "--resume", "--joint", "--tokenizer", "latents",
              "--patch-class-weight", "2"])


def test_frozen_plus_latents_reads_both_token_sequences_and_its_pool_keeps_both(parts, world, batch):
    model = make_model(parts, "frozen+latents")
    frozen, latent = make_model(parts, "frozen"), make_model(parts, "latents")
    cond = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
    tokens = model.denoiser.visual_tokens(cond)  # (B, k, N_v + h*w, D_v)
    n_frozen = cond.image_tokens.shape[2]
    assert tokens.shape[2] == n_frozen + model.latent_shape[1] * model.latent_shape[2]
    assert torch.equal(tokens[:, :, :n_frozen], cond.image_tokens)
    assert torch.equal(tokens[:, :, n_frozen:], model.denoiser.context_tokenizer(cond.context_latents,
                                                                                   cond.context_mask))
    # the prediction moves with either sequence
    x, t = torch.randn(3, *model.latent_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([9, 99, 999])
    for name in ("image_tokens", "context_latents"):
        moved = model.encode_conditions(batch.query, batch.context, batch.context_mask, batch.prompts)
        setattr(moved, name, getattr(cond, name).flip(0))
        assert not torch.allclose(model.predict(x, t, cond), model.predict(x, t, moved))
    group = encode_episodes(model, world, [4, 5], k=2)
    assert group.image_tokens.shape[2] == n_frozen and group.context_latents is not None
    _, pooled = group.batch(torch.arange(2), "cpu")
    episodes = collate_episodes([world.episode(seed, k=2) for seed in (4, 5)])
    direct = model.encode_conditions(episodes.query, episodes.context, episodes.context_mask, episodes.prompts)
    assert torch.allclose(model.predict(x[:2], t[:2], pooled), model.predict(x[:2], t[:2], direct), atol=1e-3)
    from ctxdiff_from_scratch.episode_cache import pool_key
    keys = [pool_key(m, world, 12, (1, 2)) for m in (model, frozen, latent)]
    assert len({json.dumps(key, sort_keys=True) for key in keys}) == 3  # three different pools

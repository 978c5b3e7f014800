"""Training on episodes that do not repeat: a pool refreshed with never-seen episodes at every step, and the probe
that shows memorising (pooled against unseen episodes) while a run trains."""
import json

import pytest
import torch
from test_train import parts_dir, tiny  # noqa: F401  (a fixture and a helper shared with the training tests)

from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.episode_cache import FRESH_SEED_BASE, EpisodePool, PoolRefresher, encode_episodes
from ctxdiff_from_scratch.model import ContextDiffusionModel
from ctxdiff_from_scratch.runlog import read_log
from ctxdiff_from_scratch.train import build_model, load_warm_start, train, warm_start_writes


def pool_tensors(pool: EpisodePool) -> dict:
    return {(k, name): value.clone() for k, group in pool.groups.items() for name, value in vars(group).items()
            if value is not None}


def test_refresher_rotates_never_seen_episodes_and_catches_up_in_one_pass(parts_dir):  # noqa: F811
    model = build_model(tiny(parts_dir, "unused"))
    world = ShapesWorld("train", size=32)
    build = lambda: EpisodePool.build(model, world, 12, (1, 2), progress=False)  # noqa: E731  groups of 6
    stepped = build()
    refresher = PoolRefresher(stepped, model, world, per_step=4)
    initial = pool_tensors(stepped)
    for step in range(5):  # 20 writes per group: slots 0-5 rewritten three times over, 0 and 1 a fourth time
        refresher.refresh(step)
    caught_up = build()
    PoolRefresher(caught_up, model, world, per_step=4).catch_up(5, progress=False)
    after = pool_tensors(stepped)
    for key, value in pool_tensors(caught_up).items():
        assert torch.equal(value, after[key]), key
        assert not torch.equal(value, initial[key]), f"{key}: every slot was replaced"
    # slot 2 of group 1 (k = 2) last took write 14, i.e. the episode of seed FRESH_SEED_BASE + 14 * 2 + 1
    expected = encode_episodes(model, world, [FRESH_SEED_BASE + 14 * 2 + 1], k=2)
    assert torch.equal(stepped.groups[2].latents[2], expected.latents[0])
    # a run that continues another starts after its writes: at its step 0 the pool is the other's after 20 writes
    continued = build()
    PoolRefresher(continued, model, world, per_step=4, first_write=20).catch_up(0, progress=False)
    for key, value in pool_tensors(continued).items():
        assert torch.equal(value, after[key]), key
    seeds = {refresher.seed(group, write) for group in range(2) for write in range(1000)}
    assert len(seeds) == 2000 and min(seeds) >= FRESH_SEED_BASE, "no seed repeats, none in the pool's range"


def test_prompts_longer_than_the_pool_keeps_are_padded_not_cut(parts_dir):  # noqa: F811
    model = build_model(tiny(parts_dir, "unused"))
    world = ShapesWorld("train", size=32)
    pool = EpisodePool.build(model, world, 4, (1,), progress=False)
    group = pool.groups[1]
    group.text_tokens, group.text_mask = group.text_tokens[:, :2].clone(), group.text_mask[:, :2].clone()
    fresh = encode_episodes(model, world, [FRESH_SEED_BASE], k=1)
    used = int(fresh.text_mask[0].sum())
    assert used > 2
    group.write(torch.tensor([3]), fresh)
    assert int(group.text_mask[3].sum()) == used and not group.text_mask[:3, 2:].any()


def test_fresh_training_resumes_on_the_same_pool_and_the_probe_logs_the_gap(parts_dir, tmp_path):  # noqa: F811
    config = dict(steps=6, pool_size=12, fresh_per_step=2, probe_every=2, checkpoint_every=3)
    summary = train(tiny(parts_dir, tmp_path / "straight", **config))
    assert summary["fresh_episodes"] == 6 * 2 * 3  # steps x per step x k groups
    probe = read_log(tmp_path / "straight/probe_log.csv")
    assert probe["step"] == [2, 4, 6] and len(probe["loss_seen"]) == 3
    for suffix in ("", "_T"):  # t >= T/2, and the last timestep alone (the conditional mean)
        gaps, unseen, seen = (probe[f"{name}{suffix}"] for name in ("gap", "loss_unseen", "loss_seen"))
        assert all(abs(g - (u - s)) < 1e-9 for g, u, s in zip(gaps, unseen, seen))
    assert probe["loss_unseen_T"] != probe["loss_unseen"]
    assert summary["probe"]["step"] == 6 and (tmp_path / "straight/probe_loss.png").is_file()

    # stopped after 3 steps and resumed: the pool is rebuilt as it was at step 3, so the losses are the same
    train(tiny(parts_dir, tmp_path / "resumed", **(config | {"steps": 3})))
    train(tiny(parts_dir, tmp_path / "resumed", **config), resume=True)
    straight, resumed = (read_log(tmp_path / name / "train_log.csv") for name in ("straight", "resumed"))
    assert resumed["step"] == straight["step"] and torch.allclose(torch.tensor(resumed["loss"]),
                                                                  torch.tensor(straight["loss"]), rtol=1e-6)
    assert read_log(tmp_path / "resumed/probe_log.csv")["loss_unseen"] == probe["loss_unseen"]


def test_the_probe_leaves_training_unchanged(parts_dir, tmp_path):  # noqa: F811
    with_probe = train(tiny(parts_dir, tmp_path / "probe", steps=4, pool_size=12, probe_every=1))
    without = train(tiny(parts_dir, tmp_path / "plain", steps=4, pool_size=12))
    assert with_probe["rank_weight_sha1"] == without["rank_weight_sha1"]
    assert "probe" not in without and not (tmp_path / "plain/probe_log.csv").exists()
    assert len(read_log(tmp_path / "probe/probe_log.csv")["step"]) == 4
    assert json.loads((tmp_path / "probe/train_summary.json").read_text())["probe"]["step"] == 4


def test_a_warm_start_begins_at_its_parents_weights_and_draws_only_episodes_the_parent_never_saw(
        parts_dir, tmp_path):  # noqa: F811
    pool = dict(pool_size=12, fresh_per_step=2)
    parent = tmp_path / "parent"
    train(tiny(parts_dir, parent, steps=3, **pool))
    child = tiny(parts_dir, tmp_path / "child", steps=2, warm_start=str(parent), query_invert_prob=0.5, **pool)
    model = build_model(child)
    load_warm_start(model, parent)
    trained = ContextDiffusionModel.from_pretrained(parent).denoiser.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in model.denoiser.state_dict().items())
    assert warm_start_writes(parent, child) == 3 * 2  # the parent's 3 steps x 2 writes per group

    # trained with a negligible learning rate, the continued run ends where its parent did; its own writes follow
    summary = train(tiny(parts_dir, tmp_path / "child", steps=2, warm_start=str(parent), lr=1e-12, **pool))
    assert summary["fresh_first_write"] == 6
    continued = ContextDiffusionModel.from_pretrained(tmp_path / "child").denoiser.state_dict()
    assert all(torch.allclose(value, trained[name], atol=1e-6) for name, value in continued.items())
    assert warm_start_writes(tmp_path / "child", child) == 6 + 2 * 2

    with pytest.raises(ValueError, match="differs from this run's in \\['context'\\]"):
        load_warm_start(build_model(tiny(parts_dir, tmp_path / "other", combine="concat")), parent)
    with pytest.raises(ValueError, match="--k 1 2 3"):
        warm_start_writes(parent, tiny(parts_dir, tmp_path / "other", k_choices=(1, 2)))
    with pytest.raises(ValueError, match="stage 2 starts from --init"):
        tiny(parts_dir, tmp_path / "other", stage=2, init=str(parent), warm_start=str(parent))

    # resumed, a continued run keeps the writes it started with, even when its parent's folder has changed since
    train(tiny(parts_dir, tmp_path / "resumed", steps=2, warm_start=str(parent), checkpoint_every=1, **pool))
    (parent / "train_summary.json").unlink()
    resumed = train(tiny(parts_dir, tmp_path / "resumed", steps=3, warm_start=str(parent), **pool), resume=True)
    assert resumed["steps"] == 3 and resumed["fresh_first_write"] == 6

"""Training (paper Eq. 2): condition dropout, deterministic batches, both stages, checkpoints that survive SIGKILL,
and Accelerate with two CPU processes."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctxdiff_from_scratch import train as train_module
from ctxdiff_from_scratch.config import ContextConfig
from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.episode_cache import EpisodeGroup, EpisodePool
from ctxdiff_from_scratch.model import Conditions, ContextDiffusionModel, FrozenParts, save_frozen_parts
from ctxdiff_from_scratch.runlog import read_log
from ctxdiff_from_scratch.schedule import NoiseSchedule, ScheduleConfig
from ctxdiff_from_scratch.train import (EMA, TrainConfig, build_model, diffusion_loss, draw_batch,
                                        drop_case_probabilities, flatten_optimizer_state, invert_queries, lr_factor,
                                        main, min_snr_weight, rng_state, set_rng_state, shifted_timesteps, train,
                                        unflatten_optimizer_state)
from ctxdiff_from_scratch.unet import TransformerBlock

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def parts_dir(tmp_path_factory):
    """Tiny untrained frozen parts for 32x32 ShapesWorld images, saved like a shipped folder."""
    world = ShapesWorld("train", size=32)
    folder = tmp_path_factory.mktemp("parts")
    save_frozen_parts(FrozenParts.untrained(32, [world.styled_image(s)[1] for s in range(60)]), folder)
    return folder


@pytest.fixture(scope="module")
def stage1(parts_dir, tmp_path_factory):
    """A finished tiny stage-1 run (pool of 12 episodes, so 40 steps visibly fit it)."""
    out = tmp_path_factory.mktemp("stage1")
    config = TrainConfig.from_profile("tiny", parts=str(parts_dir), out=str(out), steps=40, pool_size=12, lr=3e-3,
                                      checkpoint_every=20)
    return out, train(config)


def tiny(parts_dir, out, **overrides) -> TrainConfig:
    return TrainConfig.from_profile("tiny", parts=str(parts_dir), out=str(out), **overrides)


def transformer_blocks(model: ContextDiffusionModel) -> int:
    return sum(isinstance(module, TransformerBlock) for module in model.unet.modules())


def fake_pool(sizes=(5, 7, 9)) -> EpisodePool:
    groups = {k: EpisodeGroup(torch.zeros(n, 4, 2, 2), torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
                              torch.zeros(n, k, 4, 8), None, None) for k, n in zip((1, 2, 3), sizes)}
    return EpisodePool(groups, key={})


def test_drop_cases_give_the_paper_rates():
    config = TrainConfig.from_profile("tiny", batch_size=40000)
    probs = drop_case_probabilities(config)
    assert torch.allclose(probs, torch.tensor([0.45, 0.45, 0.05, 0.05], dtype=torch.float64))
    batch = draw_batch(fake_pool(), config, step=0, latent_shape=(4, 2, 2), num_timesteps=1000)
    assert abs(batch.drop_prompt.float().mean() - 0.5) < 0.01
    assert abs(batch.drop_context.float().mean() - 0.1) < 0.005
    assert abs((batch.drop_prompt & batch.drop_context).float().mean() - 0.05) < 0.005
    with pytest.raises(ValueError, match="joint distribution"):
        TrainConfig.from_profile("tiny", p_drop_both=0.2)


def test_batches_are_a_function_of_seed_and_step():
    config, pool = TrainConfig.from_profile("tiny", batch_size=16), fake_pool()
    a, b = (draw_batch(pool, config, 3, (4, 2, 2), 1000) for _ in range(2))
    assert a.k == b.k and torch.equal(a.noise, b.noise) and torch.equal(a.index, b.index) and torch.equal(a.t, b.t)
    later = draw_batch(pool, config, 4, (4, 2, 2), 1000)
    assert not torch.equal(a.noise, later.noise)
    ks = {draw_batch(pool, config, s, (4, 2, 2), 1000).k for s in range(30)}
    assert ks == {1, 2, 3}
    for s in range(30):
        batch = draw_batch(pool, config, s, (4, 2, 2), 1000)
        assert int(batch.index.max()) < len(pool.groups[batch.k])


def test_query_inversion_draws_its_rate_keeps_old_batches_and_inverts_only_the_chosen_queries():
    pool, plain = fake_pool(), TrainConfig.from_profile("tiny", batch_size=4000)
    inverting = TrainConfig.from_profile("tiny", batch_size=4000, query_invert_prob=0.3)
    a, b = (draw_batch(pool, config, 5, (4, 2, 2), 1000) for config in (plain, inverting))
    assert not a.invert_query.any() and abs(b.invert_query.float().mean() - 0.3) < 0.03
    for name in ("index", "t", "noise", "drop_prompt", "drop_context"):  # drawn last: the rest of the batch is kept
        assert torch.equal(getattr(a, name), getattr(b, name))
    query = torch.rand(3, 3, 8, 8)
    cond = Conditions(None, None, torch.zeros(3, 1, 4, 8), torch.ones(3, 1, dtype=torch.bool), query)
    flipped = invert_queries(cond, torch.tensor([True, False, True]))
    assert torch.equal(flipped.query[1], query[1]) and torch.allclose(flipped.query[[0, 2]], 1 - query[[0, 2]])
    assert torch.equal(flipped.image_tokens, cond.image_tokens)
    assert invert_queries(cond, torch.zeros(3, dtype=torch.bool)) is cond
    with pytest.raises(ValueError, match="probability"):
        TrainConfig.from_profile("tiny", query_invert_prob=1.5)
    with pytest.raises(ValueError, match="source maps"):
        TrainConfig.from_profile("tiny", joint=True, baseline="prompt-diffusion", query_invert_prob=0.5)


def test_optimizer_and_rng_states_round_trip():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors, rest = flatten_optimizer_state(optimizer.state_dict())
    json.dumps(rest)  # everything outside the tensors is plain JSON
    restored = unflatten_optimizer_state(tensors, json.loads(json.dumps(rest)))
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fresh.load_state_dict(restored)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state[model.weight][key], optimizer.state[model.weight][key])

    tensors, rest = rng_state()
    assert all(t.dtype == torch.uint8 for t in tensors.values())
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(tensors, json.loads(json.dumps(rest)))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_ema_follows_trained_and_keeps_frozen_weights_exact():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    module[0].requires_grad_(False)
    ema = EMA(module, decay=0.5)
    frozen = module[0].weight.detach().clone()
    before = module[1].weight.detach().clone()
    with torch.no_grad():
        module[1].weight.add_(1.0)
    ema.update(module, step=100)  # decay min(0.5, 101/110) = 0.5
    assert torch.equal(ema.shadow["0.weight"], frozen)
    assert torch.allclose(ema.shadow["1.weight"], before + 0.5)


def test_stage1_trains_and_ships_ema_weights(stage1):
    out, summary = stage1
    log = read_log(out / "train_log.csv")
    assert log["step"] == list(range(1, 41))
    first, last = np.mean(log["loss"][:10]), np.mean(log["loss"][-10:])
    assert last < 0.8 * first, (first, last)
    assert summary["steps"] == 40 and summary["images_per_second"] > 0 and (out / "train_loss.png").is_file()
    model = ContextDiffusionModel.from_pretrained(out)
    assert model.adapter is None and model.config.prediction_type == "v_prediction"
    ema = load_file(str(out / "checkpoints/step_0000040/ema.safetensors"))
    for name, p in model.denoiser.named_parameters():
        assert torch.equal(p, ema[name]), name
    assert json.loads((out / "denoiser.json").read_text())["metadata"]["training"]["steps"] == 40


def test_stage2_freezes_base_encoder_and_starts_from_stage1(stage1, tmp_path):
    out, _ = stage1
    config = TrainConfig.from_profile("tiny", stage=2, init=str(out), out=str(tmp_path), steps=3)
    base = ContextDiffusionModel.from_pretrained(out)
    model = build_model(config)
    assert model.adapter is not None and not any(p.requires_grad for p in model.unet.encoder.parameters())
    assert all(p.requires_grad for p in model.adapter.parameters())
    # zero convs: at the start of stage 2 the model predicts exactly what the stage-1 model did
    x, t = torch.randn(2, *model.latent_shape), torch.tensor([10, 900])
    cond = model.encode_conditions(torch.rand(2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32), prompts=["a red", ""])
    assert torch.equal(model.predict(x, t, cond), base.predict(x, t, cond))

    train(config)
    trained = ContextDiffusionModel.from_pretrained(tmp_path)
    for name, p in trained.unet.encoder.state_dict().items():
        assert torch.equal(p, base.unet.encoder.state_dict()[name]), name
    assert not torch.equal(trained.unet.out[2].weight, base.unet.out[2].weight)  # the decoder did train
    assert trained.adapter.mid_zero_conv.weight.abs().sum() > 0

    joint = build_model(TrainConfig.from_profile("tiny", joint=True, parts=str(out)))
    assert joint.adapter is not None and all(p.requires_grad for p in joint.denoiser.parameters())


def test_combine_mode_is_set_in_stage_1_and_inherited_in_stage_2(stage1, parts_dir, tmp_path):
    out, _ = stage1
    assert ContextDiffusionModel.from_pretrained(out).config.context.combine == ContextConfig.combine
    concat = build_model(tiny(parts_dir, tmp_path, combine="concat"))
    assert concat.config.context.combine == "concat" and concat.denoiser.conditioner.config.combine == "concat"
    inherited = build_model(TrainConfig.from_profile("tiny", stage=2, init=str(out), out=str(tmp_path)))
    assert inherited.config.context.combine == ContextConfig.combine
    other = "mean" if ContextConfig.combine != "mean" else "sum"
    with pytest.raises(ValueError, match="stage 2 keeps the stage-1 model's"):
        build_model(TrainConfig.from_profile("tiny", stage=2, init=str(out), out=str(tmp_path), combine=other))
    with pytest.raises(ValueError, match="unknown combine mode"):
        tiny(parts_dir, tmp_path, combine="max")


def test_attention_levels_reach_the_unet_and_survive_saving(parts_dir, tmp_path):
    """--attention-levels / --head-dim build transformer blocks where asked; the shipped config keeps them."""
    summary = main(["--profile", "tiny", "--parts", str(parts_dir), "--out", str(tmp_path / "att"), "--steps", "2",
                    "--attention-levels", "1", "1", "--head-dim", "8"])
    assert summary["config"]["attention_levels"] == (True, True) and summary["config"]["head_dim"] == 8
    model = ContextDiffusionModel.from_pretrained(tmp_path / "att")
    assert model.config.unet.attention_levels == (True, True) and model.config.unet.head_dim == 8
    default = build_model(tiny(parts_dir, tmp_path))
    assert default.config.unet.attention_levels == (False, True)  # the tiny profile's: none at the top level
    assert transformer_blocks(model) > transformer_blocks(default)
    with pytest.raises(ValueError, match="one bool per level"):
        TrainConfig.from_profile("tiny", attention_levels=(True, True, True))
    with pytest.raises(ValueError, match="stage 2 keeps its --init model's UNet"):
        TrainConfig.from_profile("tiny", stage=2, init="x", head_dim=8)


def test_min_snr_weights_clip_the_snr_for_either_target():
    t = torch.arange(0, 1000, 37)
    for prediction_type in ("epsilon", "v_prediction"):
        schedule = NoiseSchedule(ScheduleConfig(beta_schedule="cosine", prediction_type=prediction_type))
        snr = schedule.snr(t)
        weight = min_snr_weight(schedule, t, gamma=5.0)
        assert weight.shape == t.shape and bool((weight > 0).all()) and bool((weight <= 1 + 1e-6).all())
        # the x_0 loss weight is min(SNR, 5); eps and v losses are SNR and SNR + 1 times the x_0 loss
        x0_weight = weight * (snr if prediction_type == "epsilon" else snr + 1)
        assert torch.allclose(x0_weight, snr.clamp(max=5.0), rtol=1e-4)
        assert bool((snr > 5).any()) and bool((snr < 5).any())  # both sides of the clip are exercised
    # epsilon: below gamma the weight is exactly 1, down to the last, nearly pure-noise step (SNR ~ 1e-9)
    epsilon_schedule = NoiseSchedule(ScheduleConfig(beta_schedule="cosine", prediction_type="epsilon"))
    assert epsilon_schedule.snr(999) < 1e-6
    assert torch.equal(min_snr_weight(epsilon_schedule, torch.tensor([600, 999]), 5.0), torch.ones(2))


def test_min_snr_loss_reweights_examples_and_zero_is_plain_eq2():
    torch.manual_seed(0)
    z0, noise = torch.randn(6, 4, 2, 2), torch.randn(6, 4, 2, 2)
    t = torch.tensor([0, 5, 100, 500, 900, 999])
    prediction = torch.randn(6, 4, 2, 2)

    def denoiser(z_t, t, cond, drop_prompt, drop_context):  # a fixed "model"
        return prediction

    schedule = NoiseSchedule(ScheduleConfig(beta_schedule="cosine", prediction_type="v_prediction"))
    flags = torch.zeros(6, dtype=torch.bool)
    args = (denoiser, schedule, z0, None, t, noise, flags, flags)
    per_example = (prediction - schedule.training_target(z0, noise, t)).pow(2).flatten(1).mean(1)
    assert torch.isclose(diffusion_loss(*args), per_example.mean())
    assert torch.isclose(diffusion_loss(*args, min_snr_gamma=5.0),
                         (min_snr_weight(schedule, t, 5.0) * per_example).mean())
    with pytest.raises(ValueError, match="min_snr_gamma"):
        TrainConfig.from_profile("tiny", min_snr_gamma=-1.0)


def test_timestep_shift_leans_towards_noise_and_one_is_the_uniform_draw():
    u = torch.tensor([0.0, 0.25, 0.5, 0.999999], dtype=torch.float64)
    assert shifted_timesteps(u, 1.0, 1000).tolist() == [0, 250, 500, 999]
    # s = 3u / (1 + 2u): 0.25 -> 0.5, 0.5 -> 0.75; never T itself
    assert shifted_timesteps(u, 3.0, 1000).tolist() == [0, 500, 750, 999]
    pool = fake_pool()

    def timesteps(shift: float) -> torch.Tensor:
        config = TrainConfig.from_profile("tiny", batch_size=40000, timestep_shift=shift)
        return draw_batch(pool, config, 0, (4, 2, 2), 1000).t

    uniform, shifted = timesteps(1.0), timesteps(3.0)
    assert int(shifted.min()) >= 0 and int(shifted.max()) <= 999
    assert abs((uniform > 666).float().mean() - 1 / 3) < 0.01
    assert abs((shifted > 666).float().mean() - 0.6) < 0.01  # 3u / (1 + 2u) > 2/3  <=>  u > 0.4
    assert torch.equal(timesteps(3.0), shifted)
    with pytest.raises(ValueError, match="timestep_shift"):
        TrainConfig.from_profile("tiny", timestep_shift=0.0)


def test_wsd_learning_rate_holds_then_anneals_to_zero_by_steps_or_by_the_clock():
    config = TrainConfig.from_profile("tiny", steps=100, warmup_steps=10, lr_decay="wsd", decay_fraction=0.2)
    assert lr_factor(4, config) == pytest.approx(0.5)  # warm-up: (4 + 1) / 10
    assert lr_factor(50, config) == 1.0 and lr_factor(80, config) == pytest.approx(1.0) and lr_factor(81, config) < 1
    assert lr_factor(90, config) == pytest.approx(0.5) and lr_factor(100, config) == 0.0
    # with a one-minute cap, the clock anneals the rate long before the step count would
    timed = TrainConfig.from_profile("tiny", steps=10_000, warmup_steps=10, lr_decay="wsd", decay_fraction=0.2,
                                     minutes=1.0)
    assert lr_factor(50, timed, elapsed_seconds=30.0) == 1.0
    assert lr_factor(50, timed, elapsed_seconds=54.0) == pytest.approx(0.5)
    assert lr_factor(50, timed, elapsed_seconds=75.0) == 0.0
    constant = TrainConfig.from_profile("tiny", steps=100, warmup_steps=10, minutes=1.0)
    assert lr_factor(99, constant, elapsed_seconds=59.0) == 1.0  # the default ignores the clock
    with pytest.raises(ValueError, match="'wsd'"):
        TrainConfig.from_profile("tiny", lr_decay="linear")
    with pytest.raises(ValueError, match="decay_fraction"):
        TrainConfig.from_profile("tiny", lr_decay="wsd", decay_fraction=0.0)


def test_timestep_shift_flag_reaches_the_run(parts_dir, tmp_path):
    summary = main(["--profile", "tiny", "--parts", str(parts_dir), "--out", str(tmp_path / "shift"), "--steps", "2",
                    "--timestep-shift", "3"])
    assert summary["config"]["timestep_shift"] == 3.0
    assert json.loads((tmp_path / "shift/train_summary.json").read_text())["config"]["timestep_shift"] == 3.0


def test_min_snr_gamma_flag_reaches_the_run(parts_dir, tmp_path):
    summary = main(["--profile", "tiny", "--parts", str(parts_dir), "--out", str(tmp_path / "snr"), "--steps", "2",
                    "--min-snr-gamma", "5"])
    assert summary["config"]["min_snr_gamma"] == 5.0
    assert json.loads((tmp_path / "snr/train_summary.json").read_text())["config"]["min_snr_gamma"] == 5.0


def test_inverted_queries_reach_the_adapter_in_training(parts_dir, tmp_path):
    """--query-invert-prob 1 trains on 1 - query: the first loss is the plain run's (the adapter's zero convolutions
    hide the query at initialisation), the next ones differ once the adapter has learned from the inverted queries."""
    losses = {}
    for prob in ("0", "1"):
        summary = main(["--profile", "tiny", "--parts", str(parts_dir), "--out", str(tmp_path / prob), "--steps", "3",
                        "--joint", "--query-invert-prob", prob])
        assert summary["config"]["query_invert_prob"] == float(prob)
        losses[prob] = read_log(tmp_path / prob / "train_log.csv")["loss"]
    assert losses["0"][0] == pytest.approx(losses["1"][0], rel=1e-6)
    assert not np.allclose(losses["0"][1:], losses["1"][1:], rtol=1e-6, atol=0)


def test_gradient_accumulation_gives_the_same_steps(parts_dir, tmp_path):
    losses = []
    for accum in (1, 2):
        train(tiny(parts_dir, tmp_path / f"accum{accum}", steps=3, grad_accum=accum))
        losses.append(read_log(tmp_path / f"accum{accum}/train_log.csv")["loss"])
    assert np.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_naming_the_step(parts_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = train_module.diffusion_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", poisoned)
    with pytest.raises(FloatingPointError, match="diverged at step 3"):
        train(tiny(parts_dir, tmp_path, steps=5))


def test_time_budget_stops_early_and_saves(parts_dir, tmp_path):
    summary = train(tiny(parts_dir, tmp_path, steps=10_000, minutes=1e-4))
    assert summary["stopped_for_time"] and summary["steps"] < 10_000
    assert (tmp_path / "denoiser.safetensors").is_file()
    assert json.loads((tmp_path / "checkpoints/latest.json").read_text())["step"] == summary["steps"]


def test_pool_cache_round_trip_and_key(parts_dir, tmp_path):
    cache = tmp_path / "pool.safetensors"
    config = tiny(parts_dir, tmp_path / "run", steps=1, pool_cache=str(cache))
    model = build_model(config)
    from ctxdiff_from_scratch.episode_cache import load_or_build_pool, pool_key

    world = ShapesWorld("train", size=32)
    pool = load_or_build_pool(model, world, 12, (1, 2, 3), cache, progress=False)
    again = EpisodePool.load(cache, pool_key(model, world, 12, (1, 2, 3)))
    for k, group in pool.groups.items():
        for name, value in vars(group).items():
            stored = vars(again.groups[k])[name]
            assert (value is None and stored is None) or torch.equal(value, stored), (k, name)
    assert group.queries.dtype == torch.uint8 and group.image_tokens.dtype == torch.float16
    assert group.context_latents is None  # the frozen encoder's tokens are all this model reads
    assert EpisodePool.load(cache, pool_key(model, world, 24, (1, 2, 3))) is None  # another pool size: rebuild
    # a model that tokenizes the context latents needs a pool that keeps them: another key, the latents as fp16
    learned = build_model(tiny(parts_dir, tmp_path / "run", steps=1, tokenizer="latents"))
    assert EpisodePool.load(cache, pool_key(learned, world, 12, (1, 2, 3))) is None
    pool = load_or_build_pool(learned, world, 12, (1, 2, 3), tmp_path / "latents.safetensors", progress=False)
    again = EpisodePool.load(tmp_path / "latents.safetensors", pool_key(learned, world, 12, (1, 2, 3)))
    for k, group in pool.groups.items():
        latents = group.context_latents
        assert latents.dtype == torch.float16 and latents.shape == (len(group), k, *learned.latent_shape)
        assert torch.equal(latents, again.groups[k].context_latents)
        first = world.episode(k - 1, k=k)  # group j (here k = j + 1) starts at seed j
        _, cond = group.batch(torch.tensor([0]), "cpu")
        assert torch.allclose(cond.context_latents[0], learned.encode_images(first.context), atol=1e-2)


def test_resume_refuses_changed_options(stage1):
    out, _ = stage1
    with pytest.raises(ValueError, match="lr: checkpoint"):
        main(["--profile", "tiny", "--out", str(out), "--resume", "--lr", "0.5"])


def _cli(*args: str) -> list[str]:
    return [PYTHON, "-m", "ctxdiff_from_scratch.train", "--profile", "tiny", *args]


def _env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "CTXDIFF_DEVICE": "cpu"}


def test_sigkill_and_resume_reproduces_the_uninterrupted_losses(parts_dir, tmp_path):
    common = ["--parts", str(parts_dir), "--checkpoint-every", "5", "--threads", "1"]
    steps = 30
    subprocess.run(_cli(*common, "--out", str(tmp_path / "straight"), "--steps", str(steps)), check=True,
                   env=_env(), cwd=ROOT, capture_output=True)

    out = tmp_path / "killed"
    process = subprocess.Popen(_cli(*common, "--out", str(out), "--steps", "100000"), env=_env(), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = out / "checkpoints/latest.json"
    deadline = time.time() + 120
    while not pointer.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert 5 <= killed_at < steps, killed_at

    subprocess.run(_cli(*common, "--out", str(out), "--steps", str(steps), "--resume"), check=True, env=_env(),
                   cwd=ROOT, capture_output=True)
    straight, resumed = read_log(tmp_path / "straight/train_log.csv"), read_log(out / "train_log.csv")
    assert resumed["step"] == straight["step"] == list(range(1, steps + 1))
    assert np.allclose(resumed["loss"], straight["loss"], rtol=1e-6, atol=0), (killed_at, resumed["loss"])
    a = load_file(str(tmp_path / "straight/denoiser.safetensors"))
    b = load_file(str(out / "denoiser.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _launch_two_processes(*train_args: str) -> subprocess.CompletedProcess:
    """``train`` under ``accelerate launch`` with 2 CPU processes (gloo)."""
    launch = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ctxdiff_from_scratch.train", *train_args]
    return subprocess.run(launch, env=_env(), cwd=ROOT, capture_output=True, text=True)


def test_two_accelerate_processes_stay_in_sync_and_match_one_process(parts_dir, tmp_path):
    common = ["--parts", str(parts_dir), "--steps", "4", "--batch-size", "8", "--checkpoint-every", "100"]
    subprocess.run(_cli(*common, "--out", str(tmp_path / "one")), check=True, env=_env(), cwd=ROOT,
                   capture_output=True)
    result = _launch_two_processes("--profile", "tiny", *common, "--out", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two/train_summary.json").read_text())
    hashes = summary["rank_weight_sha1"]
    assert summary["processes"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]
    one, two = read_log(tmp_path / "one/train_log.csv"), read_log(tmp_path / "two/train_log.csv")
    assert np.allclose(one["loss"], two["loss"], rtol=1e-4)


def test_two_processes_anneal_by_one_clock(parts_dir, tmp_path):
    """A "wsd" run on a time cap anneals by its clock; the processes agree on it, so their weights stay identical."""
    result = _launch_two_processes("--profile", "tiny", "--parts", str(parts_dir), "--steps", "100000", "--minutes",
                                   "0.03", "--lr-decay", "wsd", "--decay-fraction", "1", "--batch-size", "8",
                                   "--checkpoint-every", "100000", "--out", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two/train_summary.json").read_text())
    assert summary["stopped_for_time"] and summary["steps"] >= 5
    hashes = summary["rank_weight_sha1"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    lr = read_log(tmp_path / "two/train_log.csv")["lr"][2:]  # after the tiny profile's 2 warm-up steps
    assert all(later <= earlier for earlier, later in zip(lr, lr[1:])) and lr[-1] < 0.5 * lr[0], lr

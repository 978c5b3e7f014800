"""DDPM and DDIM samplers: timesteps and whole trajectories match diffusers' schedulers step for step."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ctxdiff_from_scratch.samplers import DDIMSampler, DDPMSampler, make_timesteps
from ctxdiff_from_scratch.schedule import NoiseSchedule

SHAPE = (2, 3, 4, 4)
TOL = 1e-5  # float32 max abs difference allowed between our trajectory and diffusers'
SCHEDULES = {  # name -> (our kwargs, diffusers kwargs)
    "linear": (dict(), dict()),
    "cosine": (dict(beta_schedule="cosine"), dict(beta_schedule="squaredcos_cap_v2")),
    "sd_zero_snr": (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         rescale_zero_terminal_snr=True),
                    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         rescale_betas_zero_snr=True)),
}


def fake_model(alphas_cumprod: torch.Tensor, prediction_type: str):
    """A deterministic stand-in for a network: the exact output for a fixed 'clean image', plus a bounded error."""
    target = torch.linspace(-1, 1, SHAPE[1] * SHAPE[2] * SHAPE[3]).reshape(SHAPE[1:])  # (C, H, W)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * target) / (1 - ab).sqrt()
        out = eps if prediction_type == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * target
        return out + 0.1 * torch.sin(3 * x_t + t.view(-1, 1, 1, 1) / 100)
    return model_fn


# zero terminal SNR needs v_prediction (the config refuses epsilon there)
SCHEDULE_CASES = [(name, pred) for name in SCHEDULES for pred in ("epsilon", "v_prediction")
                  if not (name == "sd_zero_snr" and pred == "epsilon")]
# diffusers' DDIM turns eta = 1 at zero terminal SNR into NaN (sqrt of 1 - ab_prev - sigma^2 = -6e-8), so that one
# case is checked against our DDPM instead (test_ddim_with_eta_one_is_ddpm)
DDIM_CASES = [(name, pred, eta) for name, pred in SCHEDULE_CASES for eta in (0.0, 0.5, 1.0)
              if not (name == "sd_zero_snr" and eta == 1.0)]


def build(name: str, prediction_type: str):
    """Our schedule, and the keyword arguments that build the same one as a diffusers scheduler (no clipping)."""
    ours_kw, theirs_kw = SCHEDULES[name]
    schedule = NoiseSchedule(prediction_type=prediction_type, **ours_kw)
    common = dict(prediction_type=prediction_type, clip_sample=False, **theirs_kw)
    return schedule, common


def run_both(ours, theirs, model_fn, step_kwargs=None, t_map=None, seed=0):
    """Run both samplers from the same x_T with equally seeded noise generators; return the max abs gap seen."""
    step_kwargs = step_kwargs or {}
    g_ours, g_theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    x_ours = x_theirs = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed + 1))
    assert len(ours.timesteps) == len(theirs.timesteps)
    worst = 0.0
    for t, t_theirs in zip(ours.timesteps.tolist(), theirs.timesteps.tolist()):
        assert t == (t_map[t_theirs] if t_map else t_theirs)
        t_batch = torch.full((SHAPE[0],), t)
        out_ours = ours.step(model_fn(x_ours, t_batch), t, x_ours, generator=g_ours)
        out_theirs = theirs.step(model_fn(x_theirs, t_batch), t_theirs, x_theirs, generator=g_theirs, **step_kwargs)
        x_ours, x_theirs = out_ours.prev_sample, out_theirs.prev_sample
        worst = max(worst, float((x_ours - x_theirs).abs().max()),
                    float((out_ours.pred_x0 - out_theirs.pred_original_sample).abs().max()))
    for x in (x_ours, x_theirs):  # (a NaN would also slip through max() above)
        assert torch.isfinite(x).all() and x.abs().max() < 10, "the fake model should keep samples bounded"
    return worst


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_timesteps_match_diffusers(spacing, offset):
    # diffusers' trailing rule accumulates float error from n = 48 on at T = 1000 (it then rounds some x.5 the
    # other way, or even adds an extra step at t = -1); ours computes round(T - i T / n) - 1 directly.
    for T, counts in [(10, range(1, 10)), (100, range(1, 24)), (1000, range(1, 48))]:
        for n in counts:
            reference = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            reference.set_timesteps(n)
            assert make_timesteps(T, n, spacing, offset).tolist() == reference.timesteps.tolist(), (T, n)


@pytest.mark.parametrize("name,prediction_type", SCHEDULE_CASES)
@pytest.mark.parametrize("spacing,offset,n", [("leading", 0, 10), ("leading", 1, 10), ("trailing", 0, 10),
                                              ("trailing", 0, 7), ("linspace", 0, 10)])
def test_ddpm_trajectory_matches_diffusers(name, prediction_type, spacing, offset, n):
    schedule, common = build(name, prediction_type)
    ours = DDPMSampler(schedule, timestep_spacing=spacing, steps_offset=offset)
    theirs = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset, **common)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert run_both(ours, theirs, fake_model(schedule.alphas_cumprod, prediction_type)) <= TOL


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_full_1000_step_ddpm_matches_diffusers(prediction_type):
    schedule, common = build("linear", prediction_type)
    ours, theirs = DDPMSampler(schedule), DDPMScheduler(**common)
    ours.set_timesteps(1000)
    theirs.set_timesteps(1000)
    assert ours.timesteps.tolist() == list(range(999, -1, -1))
    assert run_both(ours, theirs, fake_model(schedule.alphas_cumprod, prediction_type)) <= TOL


@pytest.mark.parametrize("name,prediction_type,eta", DDIM_CASES)
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0)])
def test_ddim_trajectory_matches_diffusers(name, prediction_type, eta, spacing, offset):
    schedule, common = build(name, prediction_type)
    ours = DDIMSampler(schedule, eta=eta, timestep_spacing=spacing, steps_offset=offset)
    theirs = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset, **common)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert run_both(ours, theirs, fake_model(schedule.alphas_cumprod, prediction_type), dict(eta=eta)) <= TOL


@pytest.mark.parametrize("name,prediction_type,eta", DDIM_CASES)
@pytest.mark.parametrize("spacing,n", [("linspace", 10), ("trailing", 7)])
def test_ddim_on_uneven_timesteps_matches_diffusers_on_the_subsequence(name, prediction_type, eta, spacing, n):
    """diffusers' DDIMScheduler.step assumes every jump is T // n steps (diffusers issue #12633), which is false for
    linspace spacing or when n does not divide T. DDIM on a sub-sequence tau (Song et al. 2021, Sec. 4.2) is DDIM on
    a shorter chain whose alpha-bars are ab[tau], so that chain, built in diffusers, is the oracle."""
    schedule, common = build(name, prediction_type)
    ours = DDIMSampler(schedule, eta=eta, timestep_spacing=spacing)
    ours.set_timesteps(n)
    common.update(num_train_timesteps=n, rescale_betas_zero_snr=False)
    theirs = DDIMScheduler(timestep_spacing="leading", **common)
    # DDIMScheduler.step reads only alphas_cumprod (and final_alpha_cumprod = 1): give it ab at the visited steps
    theirs.alphas_cumprod = schedule.alphas_cumprod[ours.timesteps.flip(0)].clone()
    theirs.set_timesteps(n)
    t_map = dict(zip(range(n), ours.timesteps.flip(0).tolist()))
    worst = run_both(ours, theirs, fake_model(schedule.alphas_cumprod, prediction_type), dict(eta=eta), t_map)
    assert worst <= TOL


@pytest.mark.parametrize("name,prediction_type", SCHEDULE_CASES)
def test_ddim_with_eta_one_is_ddpm(name, prediction_type):
    """Song et al. 2021, eq. 16: eta = 1 gives the DDPM posterior variance, and then the DDIM mean equals DDPM's."""
    schedule, _ = build(name, prediction_type)
    model_fn = fake_model(schedule.alphas_cumprod, prediction_type)
    ddpm, ddim = DDPMSampler(schedule, "trailing"), DDIMSampler(schedule, eta=1.0, timestep_spacing="trailing")
    samples = [s.sample(model_fn, SHAPE, 12, torch.Generator().manual_seed(3), progress=False) for s in (ddpm, ddim)]
    assert torch.isfinite(samples[1]).all()
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=TOL)


@pytest.mark.parametrize("sampler_cls", [DDPMSampler, DDIMSampler])
@pytest.mark.parametrize("name,prediction_type", SCHEDULE_CASES)
def test_oracle_model_recovers_x0(sampler_cls, name, prediction_type):
    """A model that outputs the exact noise (or velocity) present in x_t ends every trajectory at x_0."""
    schedule, _ = build(name, prediction_type)
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(4)) * 2 - 1

    def oracle(x_t, t):
        ab = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        return schedule.training_target(x0, (x_t - ab.sqrt() * x0) / (1 - ab).sqrt(), t)
    sampler = sampler_cls(schedule, timestep_spacing="trailing")
    x = sampler.sample(oracle, SHAPE, 20, torch.Generator().manual_seed(5), progress=False)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-4)


def test_sample_is_reproducible_and_uses_x_T():
    schedule = NoiseSchedule(num_train_timesteps=50, prediction_type="v_prediction")
    sampler = DDIMSampler(schedule, eta=0.5)
    model_fn = fake_model(schedule.alphas_cumprod, "v_prediction")
    a = sampler.sample(model_fn, SHAPE, 5, torch.Generator().manual_seed(0), progress=True)
    b = sampler.sample(model_fn, SHAPE, 5, torch.Generator().manual_seed(0), progress=False)
    c = sampler.sample(model_fn, SHAPE, 5, torch.Generator().manual_seed(1), progress=False)
    assert a.shape == SHAPE and torch.equal(a, b) and not torch.allclose(a, c)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    torch.randn(SHAPE, generator=g)  # the draw that sample() spends on x_T
    assert torch.equal(sampler.sample(model_fn, SHAPE, 5, g, progress=False, x_T=x_T), a)


def test_sampler_errors_explain_the_fix():
    schedule = NoiseSchedule(num_train_timesteps=20)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        DDPMSampler(schedule).step(x, 10, x)
    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(4)
    with pytest.raises(ValueError, match="not among"):
        sampler.step(x, 7, x)
    with pytest.raises(ValueError, match="eta"):
        DDIMSampler(schedule, eta=1.5)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        DDPMSampler(schedule, timestep_spacing="uniform").set_timesteps(4)
    with pytest.raises(ValueError, match="steps_offset only"):
        make_timesteps(20, 4, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match="between 1 and"):
        make_timesteps(20, 21)
    with pytest.raises(ValueError, match="smaller steps_offset"):
        make_timesteps(20, 4, "leading", steps_offset=6)

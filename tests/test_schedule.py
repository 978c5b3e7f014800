"""The noise schedule: betas, q(x_t | x_0), prediction conversions and the posterior, checked against diffusers."""
import pytest
import torch
from diffusers import DDPMScheduler

from ctxdiff_from_scratch.schedule import NoiseSchedule, ScheduleConfig

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
# Stable Diffusion's betas for scaled_linear, DDPM's for the others
BETA_RANGE = {"scaled_linear": dict(beta_start=0.00085, beta_end=0.012)}
CASES = [(name, rescale) for name in DIFFUSERS_NAME for rescale in (False, True)]


def pair(name: str, rescale: bool, prediction_type: str = "v_prediction"):
    """Our schedule and diffusers' DDPMScheduler built from the same settings."""
    ours = NoiseSchedule(beta_schedule=name, rescale_zero_terminal_snr=rescale, prediction_type=prediction_type,
                         **BETA_RANGE.get(name, {}))
    theirs = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[name], rescale_betas_zero_snr=rescale,
                           prediction_type=prediction_type, clip_sample=False, **BETA_RANGE.get(name, {}))
    return ours, theirs


@pytest.mark.parametrize("name,rescale", CASES)
def test_betas_and_alpha_bar_match_diffusers(name, rescale):
    ours, theirs = pair(name, rescale)
    assert ours.betas.dtype == torch.float32 and ours.betas.shape == (1000,)
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.alphas, theirs.alphas, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name,rescale", CASES)
def test_add_noise_and_velocity_match_diffusers(name, rescale):
    ours, theirs = pair(name, rescale)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 500, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.v_target(x0, noise, t), theirs.get_velocity(x0, noise, t), rtol=0, atol=1e-6)
    # an int t applies to the whole batch
    torch.testing.assert_close(ours.add_noise(x0, noise, 321), ours.add_noise(x0, noise, torch.full((5,), 321)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predictions_convert_back_to_x0_and_noise(prediction_type):
    schedule = NoiseSchedule(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 3, 3, generator=g).double(), torch.randn(4, 2, 3, 3, generator=g).double()
    t = torch.tensor([0, 250, 750, 999])
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.training_target(x0, noise, t)
    expected = noise if prediction_type == "epsilon" else schedule.v_target(x0, noise, t)
    assert torch.equal(target, expected)
    torch.testing.assert_close(schedule.predict_x0(target, x_t, t), x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(schedule.predict_eps(target, x_t, t), noise, rtol=0, atol=1e-9)


def test_posterior_is_the_product_of_the_two_gaussians():
    """q(x_s | x_t, x_0) ~ q(x_t | x_s) q(x_s | x_0): compare DDPM eq. 7 with the precision-weighted product."""
    schedule = NoiseSchedule(beta_schedule="cosine")
    g = torch.Generator().manual_seed(2)
    x0, x_t = torch.randn(3, 1, 2, 2, generator=g).double(), torch.randn(3, 1, 2, 2, generator=g).double()
    t, s = torch.tensor([1, 400, 999]), torch.tensor([0, 350, 979])  # s = t - 1 and strided steps
    ab = schedule.alphas_cumprod.double()
    alpha = ab[t] / ab[s]  # q(x_t | x_s) = N(sqrt(alpha) x_s, (1 - alpha) I)
    precision = alpha / (1 - alpha) + 1 / (1 - ab[s])
    expected_var = 1 / precision
    expected_mean = expected_var.view(-1, 1, 1, 1) * (
        (alpha.sqrt() / (1 - alpha)).view(-1, 1, 1, 1) * x_t + (ab[s].sqrt() / (1 - ab[s])).view(-1, 1, 1, 1) * x0)
    mean, var = schedule.posterior(x0, x_t, t, s)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var.flatten(), expected_var, rtol=1e-5, atol=0)
    # t_prev defaults to t - 1
    torch.testing.assert_close(schedule.posterior(x0, x_t, 400)[0], schedule.posterior(x0, x_t, 400, 399)[0])
    # stepping to t = -1 (clean data) has zero variance and returns x_0 itself
    mean, var = schedule.posterior(x0, x_t, 0)
    assert float(var.abs().max()) == 0
    torch.testing.assert_close(mean, x0)


def test_snr_and_zero_terminal_snr():
    sd = NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    snr = sd.snr(torch.arange(1000))
    assert torch.all(snr[1:] < snr[:-1]), "SNR must fall as t grows"
    torch.testing.assert_close(snr, sd.alphas_cumprod / (1 - sd.alphas_cumprod))
    # Lin et al. 2023 (Table 1): Stable Diffusion's last step keeps SNR 0.0047, i.e. some signal
    assert round(float(sd.snr(999)), 4) == 0.0047
    rescaled = NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                             prediction_type="v_prediction", rescale_zero_terminal_snr=True)
    assert float(rescaled.snr(999)) == 0 and float(rescaled.alphas_cumprod[-1]) == 0
    # the rescaling keeps the first step's alpha-bar and the ordering of the others
    torch.testing.assert_close(rescaled.alphas_cumprod[0], sd.alphas_cumprod[0])
    assert torch.all(rescaled.alphas_cumprod[1:] < rescaled.alphas_cumprod[:-1])


def test_schedule_moves_with_to_and_stays_out_of_state_dicts():
    schedule = NoiseSchedule(ScheduleConfig(num_train_timesteps=10), beta_schedule="cosine")
    assert schedule.config.num_train_timesteps == 10 and schedule.config.beta_schedule == "cosine"
    assert schedule.state_dict() == {}
    moved = schedule.to("meta")
    assert moved.betas.device.type == moved.alphas.device.type == moved.alphas_cumprod.device.type == "meta"
    assert "cosine" in repr(schedule)


@pytest.mark.parametrize("kwargs,message", [
    (dict(beta_schedule="squaredcos_cap_v2"), "called 'cosine'"),
    (dict(beta_schedule="quadratic"), "unknown beta_schedule"),
    (dict(prediction_type="sample"), "unknown prediction_type"),
    (dict(beta_start=0.02, beta_end=0.0001), "beta_start < beta_end"),
    (dict(beta_start=0.01, beta_end=0.01), "beta_start < beta_end"),
    (dict(num_train_timesteps=1), ">= 2"),
    (dict(num_train_timesteps=10.0), ">= 2"),
    (dict(rescale_zero_terminal_snr=True), "v_prediction"),
])
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule(**kwargs)


def test_out_of_range_timesteps_raise():
    schedule = NoiseSchedule(num_train_timesteps=10)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\[-1, 9\]"):
        schedule.add_noise(x, x, 10)
    with pytest.raises(ValueError, match="B = 2"):
        schedule.add_noise(x, x, torch.tensor([1, 2, 3]))

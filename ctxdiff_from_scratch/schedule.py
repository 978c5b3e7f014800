"""The forward (noising) process of a diffusion model, and the algebra that inverts it.

A noise schedule is a list of variances beta_1..beta_T. Everything else follows from it:

    alpha_t = 1 - beta_t,   ab_t = alpha_1 * ... * alpha_t   ("alpha-bar", the signal kept after t steps)
    q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)            DDPM (Ho et al. 2020) eq. 4
    SNR(t) = ab_t / (1 - ab_t)                                 signal-to-noise ratio (Kingma et al. 2021, eq. 3)

Timesteps are 0-based like in diffusers: index t = 0 .. T-1 holds what the papers call step t+1, and t = -1 stands
for "no noise at all" (ab = 1). A network sees x_t and predicts either the noise eps (DDPM) or the velocity v
(Salimans & Ho 2022); ``predict_x0`` / ``predict_eps`` turn either prediction into the quantities samplers need.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction")
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal 2021 eq. 17: keeps beta_1 from being vanishingly small
COSINE_MAX_BETA = 0.999  # Nichol & Dhariwal 2021 clip betas here so the last steps stay invertible


@dataclass(frozen=True)
class ScheduleConfig:
    """What defines a noise schedule. Defaults are DDPM's (Ho et al. 2020, Sec. 4): T = 1000, linear 1e-4 .. 0.02.

    beta_schedule: "linear" (DDPM), "scaled_linear" (Latent/Stable Diffusion) or "cosine" (Nichol & Dhariwal 2021;
        diffusers calls it "squaredcos_cap_v2"; it ignores beta_start/beta_end).
    prediction_type: what the network outputs, "epsilon" (the noise) or "v_prediction" (the velocity).
    rescale_zero_terminal_snr: shift the schedule so that the last step is pure noise (Lin et al. 2023, Alg. 1).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    rescale_zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {self.num_train_timesteps!r}; "
                             "a diffusion needs at least two noise levels (DDPM uses 1000).")
        if self.beta_schedule not in BETA_SCHEDULES:
            hint = " (diffusers' 'squaredcos_cap_v2' is called 'cosine' here)" \
                if self.beta_schedule == "squaredcos_cap_v2" else ""
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}{hint}; choose one of {BETA_SCHEDULES}.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; choose one of {PREDICTION_TYPES}.")
        if self.beta_schedule != "cosine" and not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"a {self.beta_schedule} schedule needs 0 < beta_start < beta_end < 1, got beta_start="
                             f"{self.beta_start}, beta_end={self.beta_end}; DDPM uses 0.0001 and 0.02.")
        if self.rescale_zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError("rescale_zero_terminal_snr=True makes the last step pure noise, where an epsilon "
                             "prediction cannot be turned back into x0 (x0 = (x_t - eps) / 0). Use "
                             "prediction_type='v_prediction', as Lin et al. 2023 (Sec. 3.2) do.")


def make_betas(config: ScheduleConfig) -> torch.Tensor:
    """The T betas of ``config`` as a float32 tensor (before any zero-terminal-SNR rescaling)."""
    T = config.num_train_timesteps
    if config.beta_schedule == "linear":
        # beta_t = beta_start + (beta_end - beta_start) (t - 1) / (T - 1)        (DDPM Sec. 4)
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float32)
    if config.beta_schedule == "scaled_linear":
        # sqrt(beta_t) linear in t, so small betas last longer                  (Latent Diffusion, Rombach et al. 2022)
        return torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, T, dtype=torch.float32) ** 2
    # ab(s) = cos^2((s + 0.008) / 1.008 * pi / 2), s = t / T                    (Nichol & Dhariwal 2021, eq. 17)
    s = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = torch.cos((s + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    # beta_t = min(1 - ab(t) / ab(t - 1), 0.999)                                (Nichol & Dhariwal 2021, Sec. 3.2)
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=COSINE_MAX_BETA)
    return betas.to(torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(ab) so that ab_T = 0 (pure noise) while ab_1 is unchanged: Lin et al. 2023, Algorithm 1.

    Common schedules end at SNR(T) > 0, so training never shows the model pure noise, yet sampling starts from it.
    """
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    # sqrt(ab_t) <- (sqrt(ab_t) - sqrt(ab_T)) * sqrt(ab_1) / (sqrt(ab_1) - sqrt(ab_T))
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab ** 2
    # alpha_t = ab_t / ab_{t-1} (alpha_1 = ab_1), beta_t = 1 - alpha_t
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


class NoiseSchedule(nn.Module):
    """A noise schedule as buffers (``betas``, ``alphas``, ``alphas_cumprod``) that move with ``.to(device)``.

    Build it from a ``ScheduleConfig`` and/or keyword overrides::

        NoiseSchedule(beta_schedule="cosine", prediction_type="v_prediction")
        NoiseSchedule(ScheduleConfig(num_train_timesteps=100))

    ``t`` arguments are 0-based step indices: an int, or a long tensor of shape (B,) with one step per sample.
    The buffers are not saved in state dicts: they are rebuilt from the config.
    """

    def __init__(self, config: ScheduleConfig | None = None, **overrides) -> None:
        super().__init__()
        self.config = replace(config or ScheduleConfig(), **overrides)
        betas = make_betas(self.config)
        if self.config.rescale_zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.register_buffer("betas", betas, persistent=False)
        # alpha_t = 1 - beta_t
        self.register_buffer("alphas", 1 - betas, persistent=False)
        # ab_t = prod_{s <= t} alpha_s
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, dim=0), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self.config).items())

    def alpha_bar(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ab_t, shaped to broadcast against ``like`` (B, ...), in its dtype; t = -1 gives ab = 1 (clean data)."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device).long()
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, like.shape[0])):
            raise ValueError(f"t must be an int or a (B,) tensor with B = {like.shape[0]}, got shape {tuple(t.shape)}.")
        if int(t.max()) >= self.num_train_timesteps or int(t.min()) < -1:
            raise ValueError(f"timesteps must lie in [-1, {self.num_train_timesteps - 1}] (0-based; -1 = clean), "
                             f"got values in [{int(t.min())}, {int(t.max())}].")
        ab = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones_like(self.alphas_cumprod[0]))
        # (B,) or () -> (B, 1, ..., 1): one value per sample, broadcast over channels and pixels
        return ab.reshape(-1, *[1] * (like.ndim - 1)).to(device=like.device, dtype=like.dtype)

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """SNR(t) = ab_t / (1 - ab_t) for a (B,) tensor or int ``t`` (Kingma et al. 2021, eq. 3). 0 = pure noise."""
        ab = self.alphas_cumprod[torch.as_tensor(t, device=self.alphas_cumprod.device).long()]
        # SNR(t) = ab_t / (1 - ab_t)
        return ab / (1 - ab)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in one shot with the given standard-normal ``noise`` (DDPM eq. 4)."""
        ab = self.alpha_bar(t, x0)
        # x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def v_target(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The velocity v = d x_t / d phi, with x_t = cos(phi) x_0 + sin(phi) eps (Salimans & Ho 2022, Sec. 4)."""
        ab = self.alpha_bar(t, x0)
        # v = sqrt(ab_t) eps - sqrt(1 - ab_t) x_0
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at x_t: the noise itself (epsilon) or the velocity (v_prediction)."""
        return noise if self.prediction_type == "epsilon" else self.v_target(x0, noise, t)

    def predict_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The clean sample implied by a network output at x_t (DDIM eq. 9; Salimans & Ho 2022, Sec. 4)."""
        ab = self.alpha_bar(t, x_t)
        if self.prediction_type == "epsilon":
            # x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)                 (invert DDPM eq. 4)
            return (x_t - (1 - ab).sqrt() * model_output) / ab.sqrt()
        # x_0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) v
        return ab.sqrt() * x_t - (1 - ab).sqrt() * model_output

    def predict_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The noise implied by a network output at x_t."""
        if self.prediction_type == "epsilon":
            return model_output
        ab = self.alpha_bar(t, x_t)
        # eps = sqrt(ab_t) v + sqrt(1 - ab_t) x_t
        return ab.sqrt() * model_output + (1 - ab).sqrt() * x_t

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor,
                  t_prev: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t_prev} | x_t, x_0), DDPM eqs. 6-7; ``t_prev`` defaults to t - 1.

        Skipping steps (t_prev < t - 1, as fast samplers do) uses the same formulas with the step's own
        alpha = ab_t / ab_prev, because the forward process from t_prev to t is again Gaussian.
        """
        t_prev = t - 1 if t_prev is None else t_prev
        ab, ab_prev = self.alpha_bar(t, x_t), self.alpha_bar(t_prev, x_t)
        # alpha_t = ab_t / ab_prev,  beta_t = 1 - alpha_t   (for the step t_prev -> t)
        alpha, beta = ab / ab_prev, 1 - ab / ab_prev
        # mu~ = sqrt(ab_prev) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) x_t   (DDPM eq. 7)
        mean = ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
        # beta~ = (1 - ab_prev) / (1 - ab_t) beta_t                                                   (DDPM eq. 7)
        variance = (1 - ab_prev) / (1 - ab) * beta
        return mean, variance

"""Samplers: run the learned reverse process from pure noise x_T back to data x_0.

Both samplers visit a descending sub-sequence of the training timesteps (``set_timesteps``) and, at each visited t,
turn the network output into a prediction of x_0 and step to the next visited timestep ``t_prev``:

* ``DDPMSampler``: ancestral sampling from the posterior q(x_{t_prev} | x_t, x0_hat) (Ho et al. 2020, Alg. 2).
* ``DDIMSampler``: the non-Markovian update of Song et al. 2021 (eq. 12); eta = 0 is deterministic, eta = 1 adds
  exactly the DDPM posterior noise.

A model is any callable ``model_fn(x_t, t) -> model_output`` with ``t`` a long tensor of shape (B,); the output is
read as the schedule's ``prediction_type``. Guidance (e.g. classifier-free) lives inside ``model_fn``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .schedule import NoiseSchedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # x_{t_prev}
    pred_x0: torch.Tensor  # the model's current guess of the clean sample


def make_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading",
                   steps_offset: int = 0) -> torch.Tensor:
    """Descending 0-based timesteps to visit, named as in Lin et al. 2023, Table 2 (and diffusers).

    leading:  0, r, 2r, ... with r = T // n (plus ``steps_offset``): never visits the noisiest step T-1.
    trailing: T-1, T-1-r, ... with r = T / n: always starts at pure(st) noise, what Lin et al. recommend.
    linspace: n evenly spaced values from 0 to T-1, rounded.
    """
    T, n = num_train_timesteps, num_inference_steps
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {TIMESTEP_SPACINGS}.")
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps = {T}, got {n}.")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset only shifts 'leading' spacing; got steps_offset={steps_offset} with "
                         f"{spacing!r}. Set steps_offset=0 or use timestep_spacing='leading'.")
    if spacing == "leading":
        # t_i = i * (T // n) + offset, i = n-1 .. 0
        timesteps = np.arange(n)[::-1] * (T // n) + steps_offset
    elif spacing == "trailing":
        # t_i = round(T - i * T / n) - 1, i = 0 .. n-1
        timesteps = np.round(T - np.arange(n) * T / n) - 1
    else:
        # t_i = round(i * (T - 1) / (n - 1)), i = n-1 .. 0
        timesteps = np.linspace(0, T - 1, n).round()[::-1]
    if timesteps.max() >= T:
        raise ValueError(f"steps_offset={steps_offset} pushes the first timestep to {int(timesteps.max())} >= {T}; "
                         "use a smaller steps_offset.")
    return torch.tensor(timesteps.tolist(), dtype=torch.long)


class Sampler(ABC):
    """What DDPM and DDIM share: the timestep list, the step-to-step bookkeeping and the sampling loop."""

    name = "sampler"

    def __init__(self, schedule: NoiseSchedule, timestep_spacing: str = "leading", steps_offset: int = 0) -> None:
        self.schedule = schedule
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.timesteps: torch.Tensor | None = None
        self._prev: dict[int, int] = {}

    def set_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """Choose which timesteps to visit (descending) and remember, for each, the one that follows it."""
        self.timesteps = make_timesteps(self.schedule.num_train_timesteps, num_inference_steps,
                                        self.timestep_spacing, self.steps_offset)
        steps = self.timesteps.tolist()
        # the last visited step goes to t = -1: the clean sample
        self._prev = dict(zip(steps, steps[1:] + [-1]))
        return self.timesteps

    def previous_timestep(self, t: int) -> int:
        """The timestep that ``step`` moves x_t to (-1 after the last one)."""
        if self.timesteps is None:
            raise RuntimeError(f"call {type(self).__name__}.set_timesteps(num_inference_steps) before step().")
        if int(t) not in self._prev:
            raise ValueError(f"timestep {int(t)} is not among this sampler's timesteps {self.timesteps.tolist()}; "
                             "step through sampler.timesteps in order.")
        return self._prev[int(t)]

    @abstractmethod
    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None) -> StepOutput:
        """Move x_t to x_{previous_timestep(t)} given the network's output at (x_t, t)."""

    @torch.no_grad()
    def sample(self, model_fn: ModelFn, shape: tuple[int, ...], num_inference_steps: int,
               generator: torch.Generator | None = None, progress: bool = True,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_T ~ N(0, I) (or start from ``x_T``) and denoise it in ``num_inference_steps`` steps.

        Samples live on the schedule's device; ``generator`` makes the whole trajectory reproducible.
        """
        device = self.schedule.alphas_cumprod.device
        x = standard_normal(shape, generator, device) if x_T is None else x_T.to(device)
        steps = self.set_timesteps(num_inference_steps).tolist()
        # `disable` is passed only to switch the bar off, so that TQDM_DISABLE=1 still silences it otherwise
        for t in tqdm(steps, desc=self.name, **({} if progress else {"disable": True})):
            t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
            x = self.step(model_fn(x, t_batch), t, x, generator=generator).prev_sample
        return x


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, I) noise drawn on the generator's device (so a CPU generator gives the same numbers everywhere)."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Alg. 2) with the "fixed small" variance beta~_t, over any timestep subset."""

    name = "DDPM"

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None) -> StepOutput:
        """x_{t_prev} ~ q(x_{t_prev} | x_t, x0_hat): the posterior with x_0 replaced by the model's guess."""
        t_prev = self.previous_timestep(t)
        x0_hat = self.schedule.predict_x0(model_output, x_t, t)
        mean, variance = self.schedule.posterior(x0_hat, x_t, t, t_prev)
        if t_prev < 0:
            # the last step returns the mean: DDPM Alg. 2 sets z = 0 at t = 1
            return StepOutput(mean, x0_hat)
        z = standard_normal(x_t.shape, generator, x_t.device, x_t.dtype)
        # x_{t_prev} = mu~(x_t, x0_hat) + sqrt(beta~_t) z
        return StepOutput(mean + variance.sqrt() * z, x0_hat)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): eta = 0 is a deterministic ODE-like sampler, eta = 1 matches DDPM's noise level."""

    name = "DDIM"

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0, timestep_spacing: str = "leading",
                 steps_offset: int = 0) -> None:
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta}.")
        super().__init__(schedule, timestep_spacing, steps_offset)
        self.eta = eta

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None) -> StepOutput:
        """DDIM eq. 12 with sigma_t(eta) from eq. 16, moving from t to the next visited timestep."""
        t_prev = self.previous_timestep(t)
        ab, ab_prev = self.schedule.alpha_bar(t, x_t), self.schedule.alpha_bar(t_prev, x_t)
        x0_hat = self.schedule.predict_x0(model_output, x_t, t)
        eps_hat = self.schedule.predict_eps(model_output, x_t, t)
        # sigma_t = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)                  (DDIM eq. 16)
        sigma = self.eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        # x_{t_prev} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z            (DDIM eq. 12)
        # (clamped: at eta = 1 and ab_t = 0, 1 - ab_prev - sigma^2 is 0 and rounding can make it -6e-8)
        x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps_hat
        if self.eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * standard_normal(x_t.shape, generator, x_t.device, x_t.dtype)
        return StepOutput(x_prev, x0_hat)

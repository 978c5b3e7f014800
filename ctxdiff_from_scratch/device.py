"""Where tensors live, and how runs are made repeatable.

One helper picks the device (cuda -> mps -> cpu); the environment variable ``CTXDIFF_DEVICE`` overrides it, e.g.
``CTXDIFF_DEVICE=cpu`` on a GPU machine. Nothing else in the package moves tensors between devices on its own.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

DEVICE_ENV_VAR = "CTXDIFF_DEVICE"


def get_device(preferred: str | None = None) -> torch.device:
    """Return ``preferred``, else ``$CTXDIFF_DEVICE``, else the best available of cuda, mps, cpu."""
    name = preferred or os.environ.get(DEVICE_ENV_VAR)
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was requested but CUDA is not available; use 'cpu' instead.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device {name!r} was requested but Apple MPS is not available; use 'cpu' instead.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded the same way for explicit noise draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

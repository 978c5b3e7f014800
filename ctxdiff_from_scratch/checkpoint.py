"""Checkpoints as ``safetensors`` weights plus a JSON config: never pickles.

A checkpoint folder holds, per model part, ``<name>.safetensors`` and ``<name>.json``. The JSON stores the config
dataclass's fields (so a model can be rebuilt before its weights are loaded) and free-form metadata.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def save_part(folder: str | Path, name: str, module: torch.nn.Module, config: Any,
              metadata: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``module``'s weights and ``config`` (a dataclass or dict) to ``folder/name.{safetensors,json}``.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point weights at lower precision to keep shipped files small.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor
    save_file(state, str(folder / f"{name}.safetensors"))
    config_dict = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = {"config": config_dict, "metadata": metadata or {}}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return folder / f"{name}.safetensors"


def load_part(folder: str | Path, name: str) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read ``folder/name.{safetensors,json}``; return ``(float32 state_dict, config dict, metadata dict)``."""
    folder = Path(folder)
    weights, config_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    for path in (weights, config_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint file {path} is missing; a checkpoint folder needs both {name}.safetensors and "
                f"{name}.json (written by save_part / the training commands).")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    payload = json.loads(config_path.read_text())
    return state, payload["config"], payload.get("metadata", {})


def config_from_dict(config_cls: type, values: dict) -> Any:
    """Build dataclass ``config_cls`` from ``values``, naming unknown keys instead of failing obscurely."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field(s) {unknown}; known fields: {sorted(known)}.")
    return config_cls(**values)

"""safetensors + JSON checkpoints, run logs and the device helper."""
from dataclasses import dataclass

import pytest
import torch

from ctxdiff_from_scratch.checkpoint import config_from_dict, load_part, save_part
from ctxdiff_from_scratch.device import get_device, seed_everything
from ctxdiff_from_scratch.runlog import CSVLogger, plot_loss_curve, read_log


@dataclass
class TinyConfig:
    width: int = 4


def test_save_load_round_trip_fp16(tmp_path):
    module = torch.nn.Linear(TinyConfig().width, 2)
    save_part(tmp_path, "tiny", module, TinyConfig(), metadata={"steps": 3}, dtype=torch.float16)
    state, config, metadata = load_part(tmp_path, "tiny")
    assert config == {"width": 4} and metadata == {"steps": 3}
    assert state["weight"].dtype == torch.float32
    assert torch.allclose(state["weight"], module.weight.detach().half().float())
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny.safetensors"):
        load_part(tmp_path, "tiny")


def test_config_from_dict_names_unknown_fields():
    assert config_from_dict(TinyConfig, {"width": 8}).width == 8
    with pytest.raises(ValueError, match="depth"):
        config_from_dict(TinyConfig, {"width": 8, "depth": 2})


def test_csv_logger_resume_and_plot(tmp_path):
    log = CSVLogger(tmp_path / "log.csv")
    log.log(step=1, loss=1.0)
    log.log(step=2, loss=0.5)
    CSVLogger(tmp_path / "log.csv", resume=True).log(step=3, loss=0.25)
    assert read_log(tmp_path / "log.csv") == {"step": [1.0, 2.0, 3.0], "loss": [1.0, 0.5, 0.25]}
    with pytest.raises(ValueError, match="header"):
        log.log(step=4)
    assert plot_loss_curve(tmp_path / "log.csv", tmp_path / "loss.png").stat().st_size > 0


def test_device_override_and_seeding(monkeypatch):
    monkeypatch.setenv("CTXDIFF_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    a = torch.randn(3, generator=seed_everything(7))
    b = torch.randn(3, generator=seed_everything(7))
    assert torch.equal(a, b)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            get_device("cuda")

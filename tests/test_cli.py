"""The command line: help, errors, and the demo (samples from the shipped models and episode galleries)."""
import subprocess
import sys

import pytest
import torch

from ctxdiff_from_scratch.__main__ import main
from ctxdiff_from_scratch.demo import (DEFAULT_CHECKPOINTS, DemoConfig, demo_episodes, generate_settings,
                                       write_sample_figures)
from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline


def test_top_level_help_lists_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "autoencoder" in out and "encoders" in out


def test_unknown_command_exits_with_message():
    with pytest.raises(SystemExit, match="unknown command 'paint'"):
        main(["paint"])


def test_demo_writes_samples_of_both_shipped_models_and_the_galleries(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ctxdiff_from_scratch", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["glyphs_samples.png", "glyphs_test_episodes.png", "glyphs_train_episodes.png",
                       "shapes_samples.png", "shapes_test_episodes.png", "shapes_train_episodes.png"]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in written)
    assert all(f"wrote {tmp_path / name}" in result.stdout for name in written)
    assert "shapes: RMSE" in result.stdout and "C+P" in result.stdout and "mean colour" in result.stdout
    assert "glyphs: mean glyph IoU" in result.stdout and "query glyph" in result.stdout


def test_a_world_without_trained_model_is_reported_and_skipped(tmp_path, capsys):
    (tmp_path / "models" / "shapes").mkdir(parents=True)
    written = write_sample_figures(tmp_path / "out", DemoConfig(checkpoints=tmp_path / "models"))
    out = capsys.readouterr().out
    assert written == [] and not list((tmp_path / "out").glob("*.png"))
    assert "shapes: no sample figure" in out and "glyphs: no sample figure" in out
    assert "no denoiser.safetensors" in out and "python -m ctxdiff_from_scratch train --world glyphs" in out


def test_demo_outputs_repeat_with_the_seed_and_differ_by_setting():
    pipe = ContextDiffusionPipeline.from_pretrained(DEFAULT_CHECKPOINTS / "shapes")
    config = DemoConfig(steps=3)
    episodes = demo_episodes("shapes", config)[0][:2]
    first = generate_settings(pipe, episodes, ("C+P", "C", "P"), config)
    again = generate_settings(pipe, episodes, ("C+P", "C", "P"), config)
    assert all(torch.equal(first[s], again[s]) for s in first)
    assert first["C"].shape == (2, 3, pipe.image_size, pipe.image_size)
    assert (first["C"] - first["P"]).abs().max() > 1e-3  # the settings really give the model different inputs

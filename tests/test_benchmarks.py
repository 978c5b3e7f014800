"""The benchmarks' wiring: time-to-quality runs every phase and writes its summary (tiny profiles); the encoder and
colour-binding probes, the binding regression, the conditional-mean, pool-memorisation, polarity
and k-shot-bounds probes run and report."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_time_to_quality_smoke_runs_every_phase(tmp_path):
    out = tmp_path / "ttq"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--smoke",
                             "--threads", "1", "--combine", "concat", "--batch-size", "4", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "time_to_quality.json").read_text())
    assert set(summary["phase_minutes"]) == {"frozen parts", "stage 1", "stage 2", "guidance", "eval"}
    assert summary["smoke"] and summary["world"] == "shapes"
    assert 0 <= summary["quality"]["rmse_forward_C"] <= 1
    assert (out / "stage2" / "denoiser.safetensors").exists()
    assert "whole stack trained in" in result.stdout
    # the recipe: the autoencoder before the encoders, both on the --threads given
    autoencoder, encoders = summary["commands"]["frozen parts"]
    assert " autoencoder " in autoencoder and "--threads 1" in autoencoder
    assert " encoders " in encoders and "--threads 1" in encoders
    # --combine reaches stage 1, and stage 2 inherits it from stage 1's model
    assert "--combine concat" in summary["commands"]["stage 1"][0]
    assert json.loads((out / "stage2" / "denoiser.json").read_text())["config"]["context"]["combine"] == "concat"
    # ShapesWorld's stage 2 anneals its learning rate (STAGE2_LR_DECAY); stage 1 keeps the constant rate
    stage1_command, stage2_command = summary["commands"]["stage 1"][0], summary["commands"]["stage 2"][0]
    assert "--lr-decay wsd" in stage2_command and "--lr-decay" not in stage1_command
    assert json.loads((out / "stage2" / "train_summary.json").read_text())["config"]["lr_decay"] == "wsd"
    # --batch-size reaches both denoiser stages
    assert all("--batch-size 4" in summary["commands"][stage][0] for stage in ("stage 1", "stage 2"))
    # the guidance phase writes the model's default s_c, which the evaluation then uses
    chosen = json.loads((out / "stage2" / "sampling.json").read_text())
    assert chosen["guidance_scale_context"] in (2.0, 3.0) and chosen["chosen_by"]["split"] == "train"
    assert summary["quality"]["guidance_scale_context"] == chosen["guidance_scale_context"]


def test_time_to_quality_refuses_a_used_folder(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--smoke",
                             "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "not empty" in result.stderr


def test_time_to_quality_resume_keeps_recorded_phases(tmp_path):
    out = tmp_path / "ttq"
    script = [sys.executable, str(ROOT / "benchmarks" / "time_to_quality.py"), "--smoke", "--threads", "1",
              "--out", str(out)]
    assert subprocess.run(script, capture_output=True, cwd=ROOT).returncode == 0
    record = json.loads((out / "phases.json").read_text())
    frozen_seconds = record["frozen parts"]["seconds"]
    del record["stage 2"], record["guidance"], record["eval"]  # as if the run had been killed during stage 2
    (out / "phases.json").write_text(json.dumps(record))
    result = subprocess.run([*script, "--resume"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[frozen parts] recorded" in result.stdout and "[stage 2] $" in result.stdout
    summary = json.loads((out / "time_to_quality.json").read_text())
    assert summary["phase_minutes"]["frozen parts"] == round(frozen_seconds / 60, 2)
    assert set(summary["phase_minutes"]) == {"frozen parts", "stage 1", "stage 2", "guidance", "eval"}
    assert "[guidance] $" in result.stdout  # re-run after stage 2, its old sampling.json removed first


def test_encoder_binding_probe_runs_and_reports_accuracies(tmp_path):
    out = tmp_path / "binding.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encoder_binding.py"), "--train-images", "64",
                             "--eval-images", "32", "--probe-steps", "3", "--threads", "1", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    accuracy = json.loads(out.read_text())["accuracy"]
    assert set(accuracy) == {"LinearProbe", "AttentionProbe"}
    for row in accuracy.values():
        assert set(row) == {"train styles (unseen images)", "test styles"}
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert "colour-of-class accuracy" in result.stdout


def test_colour_binding_runs_on_the_shipped_pipeline(tmp_path):
    out = tmp_path / "binding.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "colour_binding.py"), "--episodes", "2",
                             "--settings", "C", "--threads", "1", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    row = json.loads(out.read_text())["results"]["C"]
    assert 0.0 <= row["bound"] <= 1.0 and 0.0 < row["chance"] <= 0.5 and row["shapes_counted"] > 0
    assert set(row["mse"]) == {"background", "shape_colour", "within_shape"}
    assert "own colour" in result.stdout


@pytest.mark.parametrize("tokens, extra", [("oracle", []), ("latent", []), ("pixels", ["--class-weight", "1"])])
def test_binding_regression_trains_and_reports_against_its_bounds(tmp_path, tokens, extra):
    out = tmp_path / tokens
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "binding_regression.py"), "--tokens", tokens,
                             "--minutes", "0.02", "--batch-size", "2", "--eval-every", "1", "--out", str(out), *extra],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    bounds = summary["bounds"]
    assert 0.0 < bounds["perfect_binding"] < bounds["palette_only"] < 1.0  # binding needs more than the palette
    assert summary["steps"] >= 1 and summary["final"]["shape_mse"] > 0 and (out / "log.csv").is_file()


def test_conditional_mean_probe_scores_both_settings_and_refuses_glyph_models(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "conditional_mean.py"), "--threads", "1", "--episodes", "4"]
    out = tmp_path / "cond_mean.json"
    result = subprocess.run([*script, "--checkpoint", "data/checkpoints/shapes", "--tasks", "seg2img", "edge2img",
                             "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["split"] == "train" and report["seeds"] == [1_000_000, 1_000_003]
    scores = report["results"]["data/checkpoints/shapes"]
    assert set(scores) == {"seg2img", "edge2img"}
    for errors in scores.values():
        assert 0 < errors["context"] < 1 and 0 < errors["none"] < 1 and errors["context"] != errors["none"]
    refused = subprocess.run([*script, "--checkpoint", "data/checkpoints/glyphs"], capture_output=True, text=True,
                             cwd=ROOT)
    assert refused.returncode != 0 and "ShapesWorld Context Diffusion models" in refused.stderr


def test_pool_memorisation_probe_compares_pooled_and_unseen_episodes(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "pool_memorisation.py"), "--threads", "1", "--episodes", "3"]
    out = tmp_path / "memorisation.json"
    result = subprocess.run([*script, "--checkpoint", "data/checkpoints/shapes", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())["data/checkpoints/shapes"]
    assert report["pool_size"] == 6000 and report["k"] == 3 and report["episodes"] == 3  # from the run summary
    for suffix in ("", "_T"):
        seen, unseen = report[f"loss_seen{suffix}"], report[f"loss_unseen{suffix}"]
        assert 0 < seen < 2 and 0 < unseen < 2 and report[f"gap{suffix}"] == pytest.approx(unseen - seen)
    refused = subprocess.run([*script, "--checkpoint", "data/checkpoints/shapes", "--fonts", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0 and "training font set of a GlyphWorld model" in refused.stderr


def test_query_polarity_probe_scores_both_polarities_and_refuses_glyph_models(tmp_path):
    script = [sys.executable, str(ROOT / "benchmarks" / "query_polarity.py"), "--threads", "1", "--episodes", "2",
              "--steps", "2"]
    out = tmp_path / "polarity.json"
    result = subprocess.run([*script, "--checkpoint", "data/checkpoints/shapes", "--tasks", "sketch2img", "canny2img",
                             "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["split"] == "train" and report["first_seed"] == 1_000_000 and report["episodes"] == 2
    scores = report["results"]["data/checkpoints/shapes"]
    for scored in scores.values():
        assert 0 < scored["as_is"] < 1 and 0 < scored["inverted"] < 1 and scored["as_is"] != scored["inverted"]
    # a sketch is dark ink on white, a canny query light edges on black
    assert scores["sketch2img"]["query_brightness"] > 0.5 > scores["canny2img"]["query_brightness"]
    refused = subprocess.run([*script, "--checkpoint", "data/checkpoints/glyphs"], capture_output=True, text=True,
                             cwd=ROOT)
    assert refused.returncode != 0 and "reads ShapesWorld models" in refused.stderr


def test_k_shot_bounds_scores_every_k_on_the_same_targets(tmp_path):
    out = tmp_path / "bounds.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "k_shot_bounds.py"), "--episodes", "2",
                             "--k", "1", "3", "--tasks", "seg2img", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["split"] == "train" and report["seeds"] == [1_000_000, 1_000_001]
    for scores in report["results"].values():
        assert 0 < scores["perfect_binding"] <= scores["palette_only"] < 1 and 0 < scores["flat_oracle_rmse"] < 1


def test_k_shot_flat_oracle_paints_each_class_and_the_background_in_their_context_colours():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from k_shot_bounds import flat_oracle_rmse
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    classes = np.full((1, 4, 4), -1, dtype=np.int8)
    classes[0, :2] = 2  # the context's top half is a shape of class 2, its bottom half background
    context = torch.zeros(1, 1, 3, 4, 4)
    context[0, 0, 0, :2] = 1.0  # the shape is red on a black background
    target_classes = torch.full((1, 4, 4), -1)
    target_classes[0, :, :1] = 2  # the target's left column is class 2
    target = torch.zeros(1, 3, 4, 4)
    target[0, 0, :, :1] = 1.0
    batch = {"target": target, "context": context, "context_classes": [classes], "target_classes": target_classes,
             "shape_mask": target_classes >= 0}
    assert flat_oracle_rmse(batch) == 0.0
    target[0, 2, :, 1:] = 0.5  # the target's background is blue where the context's was black
    assert flat_oracle_rmse(batch) == pytest.approx((0.25 * 12 / 48) ** 0.5, abs=1e-4)

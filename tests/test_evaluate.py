"""Evaluation: metrics and baselines on hand-made cases, the four settings on a tiny model, and the two commands."""
import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from ctxdiff_from_scratch.data import GlyphWorld, ShapesWorld, collate_episodes
from ctxdiff_from_scratch.evaluate import (MEAN_COLOUR, QUERY_GLYPH, SETTINGS, TEXT_FONTS_ROW, EvalConfig,
                                           binding_counts, colour_binding, evaluate_glyphs, evaluate_shapes,
                                           format_table, glyph_iou, goal_rows, ink, k_shot_scaling, main_eval,
                                           main_sample, mean_colour_baseline, per_image_mse, rmse,
                                           shape_colour_scores, shape_masks, shape_pixel_errors, target_rasters)
from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline
from tiny_model import SIZE, tiny_model

TINY = EvalConfig(episodes=3, k=2, steps=2, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return ContextDiffusionPipeline(tiny_model())


def test_rmse_is_the_root_of_the_mean_per_image_mse():
    target = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 0.1)])
    pred = torch.zeros_like(target)
    assert torch.allclose(per_image_mse(pred, target), torch.tensor([0.25, 0.01]))
    # sqrt((0.25 + 0.01) / 2), not the mean of the per-image RMSEs (0.5 + 0.1) / 2
    assert rmse(pred, target) == pytest.approx(math.sqrt(0.13))
    with pytest.raises(ValueError, match="same shape"):
        rmse(pred, target[:1])


def test_mean_colour_baseline_by_hand():
    red, blue = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    red[0], blue[2] = 1.0, 1.0
    half = torch.zeros(3, 4, 4)
    half[1, :2] = 1.0  # green on the top half: mean colour (0, 0.5, 0)
    garbage = torch.full((3, 4, 4), float("nan"))
    context = torch.stack([torch.stack([red, blue]), torch.stack([half, garbage])])  # (2, 2, 3, 4, 4)
    mask = torch.tensor([[True, True], [True, False]])
    baseline = mean_colour_baseline(context, mask)
    assert baseline.shape == (2, 3, 4, 4)
    assert torch.allclose(baseline[0, :, 2, 3], torch.tensor([0.5, 0.0, 0.5]))
    assert torch.allclose(baseline[1], torch.tensor([0.0, 0.5, 0.0])[:, None, None].expand(3, 4, 4))
    with pytest.raises(ValueError, match="at least one context image"):
        mean_colour_baseline(context, torch.tensor([[True, True], [False, False]]))


def test_glyph_iou_by_hand():
    white = torch.ones(3, 8, 8)
    left, top = white.clone(), white.clone()
    left[:, :, :4] = 0.0  # ink on the left half
    top[:, :4, :] = 0.2  # ink on the top half
    assert ink(torch.stack([left]))[0].sum() == 32
    # intersection: the top-left quarter (16 px); union: three quarters (48 px)
    iou = glyph_iou(torch.stack([top, left, white, white]), torch.stack([left, left, white, left]))
    assert torch.allclose(iou, torch.tensor([1 / 3, 1.0, 1.0, 0.0]))
    # 0.5 is the ink threshold: a grey of exactly 0.5 is paper, just below is ink
    assert not ink(torch.full((1, 3, 2, 2), 0.5)).any() and ink(torch.full((1, 3, 2, 2), 0.49)).all()


def test_evaluate_shapes_runs_the_four_settings_and_the_baseline(pipe):
    world = ShapesWorld("test", size=SIZE)
    tasks = ["edge2img", "seg2img", "img2edge", "scribble2img"]
    results = evaluate_shapes(pipe, TINY, tasks=tasks, world=world)
    table = results["rmse"]
    assert set(table) == {*tasks, "forward", "reverse", "out_of_domain"}
    for row in table.values():
        assert set(row) == {*SETTINGS, MEAN_COLOUR}
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in row.values())
    # the baseline column is the baseline computed directly
    batch = collate_episodes([world.episode(seed, task="seg2img", k=TINY.k) for seed in range(TINY.episodes)])
    direct = rmse(mean_colour_baseline(batch.context, batch.context_mask), batch.target)
    assert table["seg2img"][MEAN_COLOUR] == pytest.approx(direct)
    # a group pools its tasks' images: with equal episode counts, the root of the mean of the squared task RMSEs
    forward = math.sqrt((table["edge2img"]["C"] ** 2 + table["seg2img"]["C"] ** 2) / 2)
    assert table["forward"]["C"] == pytest.approx(forward)
    assert results["context_gain_forward"] == pytest.approx(1 - table["forward"]["C"] / table["forward"]["none"])
    # the settings generate different images (with an untrained model too), so their numbers differ
    assert len({round(table["edge2img"][s], 6) for s in SETTINGS}) > 1
    text = format_table(results)
    assert "scribble2img" in text and "C+P" in text and MEAN_COLOUR in text and "shapes' pixels" in text
    # forward tasks only: the share of episodes beating the baseline, and the error on the shapes' pixels
    for name in ("wins_over_mean_colour", "shape_mse"):
        assert set(results[name]) == {"edge2img", "seg2img", "forward"}, name
    assert set(results["wins_over_mean_colour"]["forward"]) == set(SETTINGS)
    assert all(0 <= v <= 1 for row in results["wins_over_mean_colour"].values() for v in row.values())
    wins = results["wins_over_mean_colour"]
    assert wins["forward"]["C"] == pytest.approx((wins["edge2img"]["C"] + wins["seg2img"]["C"]) / 2)
    mask = shape_masks(world, range(TINY.episodes), "seg2img", TINY.k)
    baseline = mean_colour_baseline(batch.context, batch.context_mask)
    on_shapes = (baseline - batch.target).pow(2).permute(1, 0, 2, 3)[:, mask]  # (3, N, H, W) -> (3, P)
    assert results["shape_mse"]["seg2img"][MEAN_COLOUR] == pytest.approx(on_shapes.mean().item())


def test_shape_pixel_errors_and_masks():
    pred, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    pred[0, :, 0, 0] = 1.0  # one wrong pixel inside the mask of image 0 ...
    pred[1, :, 3, 3] = 1.0  # ... and one outside the mask of image 1
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2, :2] = True
    errors, counts = shape_pixel_errors(pred, target, mask)
    assert errors.tolist() == [3.0, 0.0] and counts.tolist() == [12, 12]
    # the shapes' pixels are exactly what seg2img's query map draws on its black background
    world = ShapesWorld("test", size=32)
    masks = shape_masks(world, range(3), "seg2img", 2)
    for seed in range(3):
        query = world.episode(seed, task="seg2img", k=2).query
        assert torch.equal(masks[seed], query.sum(dim=0) > 0) and masks[seed].any()


def test_settings_see_the_same_noise_and_are_reproducible(pipe):
    world = ShapesWorld("test", size=SIZE)
    config = EvalConfig(episodes=2, k=1, steps=2, batch_size=2, settings=("C",), progress=False)
    first = evaluate_shapes(pipe, config, tasks=["edge2img"], world=world)
    again = evaluate_shapes(pipe, config, tasks=["edge2img"], world=world)
    assert first["rmse"] == again["rmse"] and "context_gain_forward" not in first


def test_evaluate_glyphs_runs_the_settings_without_prompt_and_both_baselines():
    glyph_pipe = ContextDiffusionPipeline(tiny_model(prompts=False))
    world = GlyphWorld(size=SIZE, fonts=Path(matplotlib.get_data_path()) / "fonts" / "ttf", progress=False)
    results = evaluate_glyphs(glyph_pipe, TINY, world=world)
    for metric in ("rmse", "iou"):
        row = results[metric]["font2font"]
        assert set(row) == {"C", "none", QUERY_GLYPH, MEAN_COLOUR}
        assert all(math.isfinite(v) for v in row.values())
    batch = collate_episodes([world.episode(seed, k=TINY.k) for seed in range(TINY.episodes)])
    expected = glyph_iou(batch.query, batch.target).mean().item()
    assert results["iou"]["font2font"][QUERY_GLYPH] == pytest.approx(expected)
    assert "glyph IoU" in format_table(results) and TEXT_FONTS_ROW not in results["iou"]


def test_evaluate_glyphs_on_the_test_split_reports_both_glyph_test_splits():
    glyph_pipe = ContextDiffusionPipeline(tiny_model(prompts=False))
    results = evaluate_glyphs(glyph_pipe, dataclasses.replace(TINY, settings=("C",)))
    assert list(results["iou"]) == ["font2font", TEXT_FONTS_ROW] == list(results["rmse"])
    text_world = GlyphWorld(split="test-text", size=SIZE, progress=False)
    batch = collate_episodes([text_world.episode(seed, k=TINY.k) for seed in range(TINY.episodes)])
    expected = glyph_iou(batch.query, batch.target).mean().item()
    assert results["iou"][TEXT_FONTS_ROW][QUERY_GLYPH] == pytest.approx(expected)
    assert results["iou"]["font2font"][QUERY_GLYPH] != pytest.approx(expected), "two different splits"


def test_k_shot_scaling(pipe):
    world = ShapesWorld("test", size=SIZE)
    scores = k_shot_scaling(pipe, world, "edge2img", ks=(1, 3), config=TINY)
    assert list(scores) == [1, 3] and all(math.isfinite(v) for v in scores.values())
    assert scores[1] != scores[3]


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="unknown setting"):
        EvalConfig(settings=("C", "context"))
    with pytest.raises(ValueError, match="k must be >= 1"):
        EvalConfig(k=0)
    with pytest.raises(ValueError, match="split must be"):
        EvalConfig(split="validation")
    with pytest.raises(ValueError, match="first_seed"):
        EvalConfig(first_seed=-1)


def test_split_and_first_seed_choose_the_episodes(pipe):
    config = EvalConfig(episodes=2, k=1, steps=2, batch_size=2, settings=("C",), progress=False, split="train",
                        first_seed=10**6)
    results = evaluate_shapes(pipe, config, tasks=["seg2img"])
    assert results["split"] == "train"
    world = ShapesWorld("train", size=SIZE)
    batch = collate_episodes([world.episode(seed, task="seg2img", k=1) for seed in (10**6, 10**6 + 1)])
    direct = rmse(mean_colour_baseline(batch.context, batch.context_mask), batch.target)
    assert results["rmse"]["seg2img"][MEAN_COLOUR] == pytest.approx(direct)


@pytest.fixture(scope="module")
def checkpoint(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "shapes"
    pipe.model.save_pretrained(folder)
    return folder


def test_main_eval_writes_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    results = main_eval(["--checkpoint", str(checkpoint), "--episodes", "2", "--steps", "2", "--k", "1",
                         "--batch-size", "2", "--tasks", "edge2img", "--k-shot", "1", "2", "--out", str(out),
                         "--no-progress"])
    saved = json.loads(out.read_text())
    assert saved["split"] == "test" and saved["config"]["first_seed"] == 0
    assert set(saved["rmse"]["edge2img"]) == {*SETTINGS, MEAN_COLOUR}
    assert saved["rmse"] == results["rmse"] and list(saved["k_shot"]) == ["1", "2"]
    printed = capsys.readouterr().out
    assert "edge2img" in printed and f"wrote {out}" in printed


def test_results_record_the_scale_used_the_checkpoints_default_unless_given(checkpoint, tmp_path):
    (checkpoint / "sampling.json").write_text(json.dumps({"guidance_scale_context": 2.0}))
    try:
        common = ["--checkpoint", str(checkpoint), "--episodes", "1", "--steps", "2", "--k", "1", "--tasks",
                  "edge2img", "--settings", "C", "--no-progress"]
        default = main_eval(common + ["--out", str(tmp_path / "a.json")])
        given = main_eval(common + ["--guidance-context", "3", "--out", str(tmp_path / "b.json")])
        again = main_eval(common + ["--guidance-context", "2", "--out", str(tmp_path / "c.json")])
    finally:
        (checkpoint / "sampling.json").unlink()
    assert default["config"]["guidance_scale_context"] == 2.0 and given["config"]["guidance_scale_context"] == 3.0
    assert default["config"]["guidance_scale_prompt"] == 3.0
    assert default["rmse"] == again["rmse"] and default["rmse"] != given["rmse"]


def test_main_sample_writes_a_png_from_files_and_from_an_episode(checkpoint, tmp_path):
    query, context = tmp_path / "q.png", tmp_path / "c.png"
    Image.new("RGB", (40, 40), "white").save(query)
    Image.new("RGB", (40, 40), "red").save(context)
    common = ["--checkpoint", str(checkpoint), "--steps", "2", "--no-progress"]
    from_files = main_sample(common + ["--query", str(query), "--context", str(context), "--prompt", "a red circle",
                                       "--num-samples", "2", "--out", str(tmp_path / "files.png")])
    from_episode = main_sample(common + ["--episode", "3", "--task", "seg2img", "--k", "2",
                                         "--out", str(tmp_path / "episode.png")])
    for path in (from_files, from_episode):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > image.height


def test_colour_binding_scores_own_swapped_and_error_split():
    ids = np.full((16, 16), -1, dtype=np.int8)
    ids[2:8, 2:8], ids[9:15, 9:15] = 0, 1  # two 36-pixel shapes
    classes = np.where(ids == 1, 3, ids).astype(np.int8)  # shape 0: class 0, shape 1: class 3
    target = torch.full((3, 16, 16), 0.9)
    target[:, ids == 0] = torch.tensor([0.9, 0.1, 0.1])[:, None]  # red
    target[:, ids == 1] = torch.tensor([0.1, 0.1, 0.9])[:, None]  # blue
    exact = shape_colour_scores(target, target, ids, classes)
    assert (exact["bound"], exact["swapped"], exact["chance"]) == (2, 0, 1.0)  # 1/2 per shape
    assert exact["background"] == exact["shape_colour"] == 0.0 and exact["within_shape"] == pytest.approx(0.0)
    swapped = target.clone()
    swapped[:, ids == 0], swapped[:, ids == 1] = target[:, ids == 1], target[:, ids == 0]
    scores = shape_colour_scores(swapped, target, ids, classes)
    assert (scores["bound"], scores["swapped"]) == (0, 2)
    # the whole error is the shapes' mean colour: 2 shapes x 36 pixels x mean over RGB of (0.8^2 + 0 + 0.8^2) / 3
    assert scores["shape_colour"] == pytest.approx(72 * 2 * 0.64 / 3, rel=1e-5)
    assert scores["within_shape"] == pytest.approx(0.0, abs=1e-4) and scores["background"] == 0.0


def test_binding_counts_are_per_image_and_sum_to_colour_binding():
    world = ShapesWorld("test", size=64)
    seeds = range(4)
    episodes = [world.episode(seed, task="seg2img", k=1) for seed in seeds]
    targets = torch.stack([ep.target for ep in episodes])  # N x (3, H, W) -> (N, 3, H, W)
    rasters = target_rasters(world, seeds, "seg2img", 1)
    preds = targets.flip(0)  # every image answered with another episode's target
    counts = binding_counts(preds, targets, rasters)
    assert counts.shape == (4, 3) and (counts[:, 0] <= counts[:, 1]).all()
    for i in range(4):
        scores = shape_colour_scores(preds[i], targets[i], rasters[i].ids, rasters[i].classes)
        assert tuple(counts[i]) == (scores["bound"], scores["bound"] + scores["swapped"], scores["chance"])
    assert colour_binding(preds, targets, rasters) == (int(counts[:, 0].sum()), int(counts[:, 1].sum()),
                                                       pytest.approx(counts[:, 2].sum()))
    exact = binding_counts(targets, targets, rasters)
    assert (exact[:, 0] == exact[:, 1]).all() and exact[:, 1].sum() > 0, "the truth binds every counted shape"


def test_forward_tasks_report_colour_binding_context_ratio_and_goal_rows(pipe):
    config = dataclasses.replace(TINY, settings=("C", "none"))
    results = evaluate_shapes(pipe, config, tasks=["seg2img", "sketch2img"], world=ShapesWorld("test", size=SIZE))
    binding = results["colour_binding"]
    assert set(binding) == {"seg2img", "forward"} and set(binding["seg2img"]) == {"C", "none", "chance"}
    assert all(0.0 <= v <= 1.0 for v in binding["seg2img"].values()) and 0.0 < binding["seg2img"]["chance"] <= 0.5
    ratio = results["rmse"]["seg2img"]["C"] / results["rmse"]["seg2img"]["none"]
    assert results["context_to_none"]["seg2img"] == pytest.approx(ratio)
    goals = {g["goal"]: g for g in goal_rows(results)}
    assert goals["seg2img: RMSE with context / with nothing"]["met"] == (ratio <= 0.5)
    assert goals["seg2img: MSE on the shapes' pixels, C"]["value"] == results["shape_mse"]["seg2img"]["C"]
    margin = results["rmse"]["sketch2img"]["C"] - results["rmse"]["sketch2img"][MEAN_COLOUR]
    assert goals["sketch2img: RMSE(C) - RMSE(mean colour)"]["value"] == pytest.approx(margin)
    assert goals["RMSE at k = 3 / at k = 1"]["met"] is None  # not measured without k-shot
    results["k_shot"], results["k_shot_task"] = {1: 0.2, 3: 0.17}, "edge2img"
    assert {g["goal"]: g["met"] for g in goal_rows(results)}["edge2img: RMSE at k = 3 / at k = 1"] is True
    table = format_table(results)
    assert "share of shapes in their own colour" in table and "goals" in table and "not measured" not in table

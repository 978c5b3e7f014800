"""The shipped pipelines, re-measured: their recorded test evaluations reproduce, and their context beats doing without.

Each test runs the evaluation the model card quotes, with the checkpoint's own guidance (``sampling.json``), on the
test split: ShapesWorld's forward tasks in settings C and none (~30 s), GlyphWorld's fonts in setting C (~10 s).
"""
import json
from pathlib import Path

import pytest
import torch

from ctxdiff_from_scratch.data.shapes import FORWARD_TASKS
from ctxdiff_from_scratch.evaluate import TEXT_FONTS_ROW, EvalConfig, evaluate_glyphs, evaluate_shapes
from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline

CHECKPOINTS = Path(__file__).resolve().parents[1] / "data" / "checkpoints"
TOLERANCE = 2e-3  # the card's numbers were measured on 2 threads; another thread count reorders float sums


def _recorded(world: str) -> dict:
    return json.loads((CHECKPOINTS / world / "eval_test.json").read_text())


def _evaluate(world: str, settings: tuple[str, ...]) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as the card's evaluation ran
    try:
        pipe = ContextDiffusionPipeline.from_pretrained(CHECKPOINTS / world)
        config = EvalConfig(settings=settings, progress=False)
        if world == "shapes":
            return evaluate_shapes(pipe, config, tasks=FORWARD_TASKS)
        return evaluate_glyphs(pipe, config)
    finally:
        torch.set_num_threads(threads)


def test_shipped_shapes_model_reproduces_its_card_and_its_context_beats_no_context_and_the_mean_colour():
    measured, recorded = _evaluate("shapes", ("C", "none")), _recorded("shapes")
    sampling = json.loads((CHECKPOINTS / "shapes" / "sampling.json").read_text())
    assert measured["config"]["guidance_scale_context"] == sampling["guidance_scale_context"]
    assert recorded["config"]["guidance_scale_context"] == sampling["guidance_scale_context"]
    for setting in ("C", "none"):
        assert measured["rmse"]["forward"][setting] == pytest.approx(recorded["rmse"]["forward"][setting],
                                                                     abs=TOLERANCE)
    # The context carries the style: context alone beats painting the context's mean colour, which beats no condition,
    # and it cuts the unconditioned error by issue 5's 40% (the card: 44.3%).
    forward = measured["rmse"]["forward"]
    assert forward["C"] < forward["baseline_mean_colour"] < forward["none"]
    assert 1 - forward["C"] / forward["none"] >= 0.40


def test_shipped_glyphs_model_reproduces_its_card_and_beats_the_query_glyph():
    measured, recorded = _evaluate("glyphs", ("C",)), _recorded("glyphs")
    for row in ("font2font", TEXT_FONTS_ROW):  # both glyph test splits, as the card reports them
        assert measured["iou"][row]["C"] == pytest.approx(recorded["iou"][row]["C"], abs=TOLERANCE)
    iou = measured["iou"]["font2font"]
    assert iou["C"] > iou["baseline_query_glyph"]

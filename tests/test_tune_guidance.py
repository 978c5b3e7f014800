"""tune-guidance: candidates scored on unseen train episodes, the best written to sampling.json and then used."""
import json

import pytest

from ctxdiff_from_scratch import tune_guidance as tg
from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.data.shapes import FORWARD_TASKS
from ctxdiff_from_scratch.evaluate import EvalConfig, evaluate_shapes
from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline
from tiny_model import SIZE, tiny_model

TINY = dict(episodes=2, steps=2, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return ContextDiffusionPipeline(tiny_model())


def test_validation_score_is_the_forward_rmse_of_setting_c_on_train_episodes(pipe):
    world = ShapesWorld("train", size=SIZE)
    score = tg.validation_score(pipe, world, 2.0, tg.TuneConfig(scales=(2.0,), first_seed=1_000_000, **TINY))
    direct = evaluate_shapes(pipe, EvalConfig(episodes=2, steps=2, batch_size=2, progress=False, settings=("C",),
                                              guidance_scale_context=2.0, split="train", first_seed=1_000_000),
                             tasks=FORWARD_TASKS, world=world)
    assert score == direct["rmse"]["forward"]["C"]


@pytest.mark.parametrize("shapes, best", [(True, 2.0), (False, 3.0)])
def test_the_best_candidate_wins_lowest_rmse_or_highest_iou(pipe, monkeypatch, shapes, best):
    measured = {1.5: 0.30, 2.0: 0.10, 3.0: 0.20, 4.0: 0.30}
    if not shapes:
        measured = {1.5: 0.30, 2.0: 0.10, 3.0: 0.40, 4.0: 0.35}
    monkeypatch.setattr(tg, "validation_score", lambda pipe, world, scale, config: measured[scale])
    world = ShapesWorld("train", size=SIZE) if shapes else _Split()
    chosen = tg.tune_guidance(pipe, world, tg.TuneConfig(scales=(1.5, 2.0, 3.0, 4.0), **TINY))
    assert chosen["guidance_scale_context"] == best and chosen["guidance_scale_prompt"] == 3.0
    assert chosen["chosen_by"]["scores"] == {"1.5": measured[1.5], "2": measured[2.0], "3": measured[3.0],
                                             "4": measured[4.0]}
    assert ("lower" if shapes else "higher") in chosen["chosen_by"]["metric"]


class _Split:
    """A stand-in world that is not ShapesWorld (the metric is then an IoU, higher is better)."""

    split = "train"


def test_command_writes_sampling_json_that_the_pipeline_then_uses(pipe, tmp_path, capsys):
    folder = tmp_path / "shapes"
    pipe.model.save_pretrained(folder)
    args = ["--checkpoint", str(folder), "--scales", "1", "3", "--episodes", "1", "--steps", "2", "--no-progress"]
    tg.main(args + ["--dry-run"])
    assert not (folder / "sampling.json").exists()
    chosen = tg.main(args)
    stored = json.loads((folder / "sampling.json").read_text())
    assert stored == json.loads(json.dumps(chosen)) and stored["chosen_by"]["first_seed"] == 1_000_000
    scores = stored["chosen_by"]["scores"]
    assert stored["guidance_scale_context"] == float(min(scores, key=scores.get))
    loaded = ContextDiffusionPipeline.from_pretrained(folder)
    assert loaded.guidance_defaults["guidance_scale_context"] == stored["guidance_scale_context"]
    assert f"wrote {folder / 'sampling.json'}" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, match", [(dict(scales=()), "at least one"), (dict(scales=(2.0, 2.0)), "differ"),
                                           (dict(scales=(float("nan"),)), "finite"), (dict(episodes=0), "episodes")])
def test_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tg.TuneConfig(**kwargs)

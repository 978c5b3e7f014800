"""experiments.py: the published protocols, every table with an interval on tiny models, a perfect 'model', the
paired table, the glyph baselines, the files written and the errors of ``eval --protocol``."""
import csv
import dataclasses
import json
from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

from ctxdiff_from_scratch.baselines.glyph_retrieval import nearest_font_answers
from ctxdiff_from_scratch.baselines.prompt_diffusion import PairDiffusionModel
from ctxdiff_from_scratch.data import GlyphWorld, ShapesWorld, collate_episodes
from ctxdiff_from_scratch.evaluate import TASK_GROUPS, TEXT_FONTS_ROW, evaluate_shapes, glyph_iou, main_eval
from ctxdiff_from_scratch.experiments import (BINDING, CSV_COLUMNS, GROUND_TRUTH, IOU, LAYOUT, MEAN_COLOUR_METHOD,
                                              NEAREST_FONT, NO_SETTING, RETURN_QUERY, RMSE, SHAPE_MSE, Experiment,
                                              common_world, format_tables, glyph_test_worlds, load_protocol,
                                              parse_checkpoints, run_glyphs, run_shapes, write_experiment)
from ctxdiff_from_scratch.metrics import FD_OURS
from ctxdiff_from_scratch.pipeline import ContextDiffusionPipeline
from tiny_model import SIZE, tiny_model

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
TINY = dataclasses.replace(load_protocol("quick"), name="tiny", episodes=3, k=2, steps=2, batch_size=3,
                           tasks={"forward": ("seg2img",), "reverse": ("img2edge",),
                                  "out_of_domain": ("scribble2img",)},
                           k_shot=(1, 2), bootstrap_resamples=50, grid_episodes=2)


def cells_of(experiment: Experiment, **where) -> list[dict]:
    return [c for c in experiment.cells if all(c[name] == value for name, value in where.items())]


def one_cell(experiment: Experiment, **where) -> dict:
    found = cells_of(experiment, **where)
    assert len(found) == 1, (where, found)
    return found[0]


def half_width(cell: dict) -> float:
    return (cell["ci_high"] - cell["ci_low"]) / 2


@pytest.fixture(scope="module")
def pipe():
    return ContextDiffusionPipeline(tiny_model())


@pytest.fixture(scope="module")
def pd_pipe():
    """A tiny untrained Prompt-Diffusion-style baseline (reads pairs: fails unless it is handed their sources)."""
    return ContextDiffusionPipeline(tiny_model(seed=1, model_class=PairDiffusionModel))


@pytest.fixture(scope="module")
def shapes_world():
    return ShapesWorld("test", size=SIZE)


@pytest.fixture(scope="module")
def experiment(pipe, pd_pipe, shapes_world):
    """ours, its twin (the very same pipeline) and the PD-style baseline on the tiny protocol."""
    return run_shapes({"ours": pipe, "twin": pipe, "pd": pd_pipe}, TINY, world=shapes_world, progress=False)


# --- the protocols ---------------------------------------------------------------------------------------------------
def test_the_published_manifest_holds_the_quick_and_the_full_protocol():
    full, quick = load_protocol("full"), load_protocol("quick")
    assert (full.split, full.first_seed, full.episodes, full.k, full.steps) == ("test", 0, 64, 3, 25)
    assert full.tasks == TASK_GROUPS and full.settings == ("C+P", "C", "P") and full.k_shot == (1, 2, 3, 5)
    assert (full.bootstrap_resamples, full.bootstrap_level) == (1000, 0.95)
    assert quick.episodes < full.episodes and quick.steps < full.steps and quick.k_shot == full.k_shot
    assert list(quick.seeds) == list(range(quick.episodes))


def test_the_combination_ablation_protocol_is_the_full_one_on_the_forward_tasks_alone():
    full, combine = load_protocol("full"), load_protocol("combine")
    assert combine.tasks == {"forward": full.tasks["forward"]} and combine.settings == ("C",)
    assert combine.k_shot == (1, 3) and list(combine.seeds) == list(full.seeds)
    assert (combine.steps, combine.sampler, combine.bootstrap_resamples) == (full.steps, full.sampler,
                                                                            full.bootstrap_resamples)


def test_bad_protocols_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown protocol 'fast'.*'full', 'quick'"):
        load_protocol("fast")
    fields = dataclasses.asdict(TINY)
    del fields["name"], fields["steps"]
    manifest = tmp_path / "protocols.json"
    manifest.write_text(json.dumps({"protocols": {"tiny": fields}}))
    with pytest.raises(ValueError, match=r"missing fields \['steps'\]"):
        load_protocol("tiny", manifest)
    with pytest.raises(FileNotFoundError, match="no protocol manifest"):
        load_protocol("tiny", tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="not forward tasks"):
        dataclasses.replace(TINY, tasks={"forward": ("img2edge",)})
    with pytest.raises(ValueError, match="grid_episodes"):
        dataclasses.replace(TINY, grid_episodes=4)
    with pytest.raises(ValueError, match="unknown setting"):
        dataclasses.replace(TINY, settings=("C", "context"))
    with pytest.raises(ValueError, match="level must be in"):
        dataclasses.replace(TINY, bootstrap_level=95)


# --- the tables ------------------------------------------------------------------------------------------------------
def test_every_table_has_its_rows_columns_and_metrics(experiment):
    forward = cells_of(experiment, table="forward")
    assert {c["row"] for c in forward} == {"seg2img", "forward"}
    assert {c["metric"] for c in forward} == {RMSE, FD_OURS, LAYOUT, SHAPE_MSE, BINDING}
    assert {(c["method"], c["setting"]) for c in forward} == {
        *((m, s) for m in ("ours", "twin", "pd") for s in TINY.settings), (MEAN_COLOUR_METHOD, NO_SETTING),
        (GROUND_TRUTH, NO_SETTING)}
    assert {c["metric"] for c in forward if c["method"] == GROUND_TRUTH} == {LAYOUT}
    assert {c["metric"] for c in cells_of(experiment, table="reverse")} == {RMSE}
    assert {c["metric"] for c in cells_of(experiment, table="out_of_domain")} == {RMSE, FD_OURS, LAYOUT, SHAPE_MSE,
                                                                                 BINDING}
    k_shot = cells_of(experiment, table="k_shot")
    assert {(c["row"], c["method"], c["setting"]) for c in k_shot} == {
        (f"k={k}", m, "C") for k in (1, 2) for m in ("ours", "twin", "pd")}
    assert all(c["episodes"] == TINY.episodes for c in experiment.cells if c["metric"] != BINDING)
    # colour binding counts the episodes with shapes of rival colours, which the ground truth alone decides
    for row in ("seg2img", "scribble2img"):
        counts = {c["episodes"] for c in experiment.cells if c["metric"] == BINDING and c["row"].endswith(row)}
        assert len(counts) == 1 and 1 <= counts.pop() <= TINY.episodes
    text = format_tables(experiment.cells, TINY.bootstrap_level)
    assert "forward: FD-ours" in text and "ours C+P" in text and " +- " in text and "pd - " not in text


def test_a_cell_is_its_metric_of_the_episodes_it_was_generated_on(experiment, pipe, shapes_world):
    mean_colour = one_cell(experiment, table="reverse", row="img2edge", method=MEAN_COLOUR_METHOD, metric=RMSE)
    batch = collate_episodes([shapes_world.episode(s, task="img2edge", k=TINY.k) for s in TINY.seeds])
    colour = batch.context.mean(dim=(1, 3, 4))[:, :, None, None]  # (N, k, 3, H, W) -> (N, 3, 1, 1)
    assert mean_colour["estimate"] == pytest.approx((colour - batch.target).pow(2).mean().sqrt().item())
    # a group pools its tasks' episodes; with one task, it is that task
    for metric in (RMSE, SHAPE_MSE):
        task = one_cell(experiment, table="forward", row="seg2img", method="ours", setting="C", metric=metric)
        group = one_cell(experiment, table="forward", row="forward", method="ours", setting="C", metric=metric)
        assert group["estimate"] == pytest.approx(task["estimate"])


def test_the_cells_agree_with_the_card_evaluation_of_the_same_episodes(experiment, pipe, shapes_world):
    config = dataclasses.replace(TINY.eval_config(), settings=("C",))
    card = evaluate_shapes(pipe, config, tasks=["seg2img", "img2edge"], world=shapes_world)
    for row, table in (("seg2img", "forward"), ("img2edge", "reverse")):
        ours = one_cell(experiment, table=table, row=row, method="ours", setting="C", metric=RMSE)
        assert ours["estimate"] == pytest.approx(card["rmse"][row]["C"])
    for metric, name in ((SHAPE_MSE, "shape_mse"), (BINDING, "colour_binding")):
        ours = one_cell(experiment, table="forward", row="seg2img", method="ours", setting="C", metric=metric)
        assert ours["estimate"] == pytest.approx(card[name]["seg2img"]["C"]), metric


def test_every_interval_holds_its_estimate(experiment):
    for cell in experiment.cells:
        assert cell["ci_low"] - 1e-9 <= cell["estimate"] <= cell["ci_high"] + 1e-9, cell
    widths = [half_width(c) for c in cells_of(experiment, table="forward", method="ours", metric=RMSE)]
    assert all(w > 0 for w in widths), "an untrained model's RMSE varies from episode to episode"


def test_intervals_shrink_with_more_episodes(pipe, shapes_world):
    def widths(episodes: int) -> list[float]:
        protocol = dataclasses.replace(TINY, episodes=episodes, tasks={"forward": ("seg2img",)}, settings=("C",),
                                       k_shot=(1,), bootstrap_resamples=200)
        result = run_shapes({"ours": pipe}, protocol, world=shapes_world, progress=False)
        # not the mean colour's layout fidelity: a flat image has no edges, 0 on every episode
        cells = [("ours", RMSE), ("ours", LAYOUT), ("ours", SHAPE_MSE), (MEAN_COLOUR_METHOD, RMSE),
                 (MEAN_COLOUR_METHOD, SHAPE_MSE)]
        return [half_width(one_cell(result, table="forward", row="seg2img", method=method, metric=metric))
                for method, metric in cells]

    few, many = widths(4), widths(24)
    assert all(m < f for f, m in zip(few, many)), (few, many)


def test_the_paired_table_is_zero_against_itself_and_signed_first_minus_other(experiment):
    paired = cells_of(experiment, table="paired")
    assert {c["method"] for c in paired} == {"ours - twin", "ours - pd"}
    assert FD_OURS not in {c["metric"] for c in paired}
    assert {c["row"] for c in paired} >= {"forward: seg2img", "forward: forward", "reverse: img2edge", "k_shot: k=2"}
    for cell in paired:
        if cell["method"] == "ours - twin":
            assert (cell["estimate"], cell["ci_low"], cell["ci_high"]) == (0.0, 0.0, 0.0), cell
    ours = one_cell(experiment, table="forward", row="seg2img", method="ours", setting="C", metric=RMSE)
    pd = one_cell(experiment, table="forward", row="seg2img", method="pd", setting="C", metric=RMSE)
    difference = one_cell(experiment, table="paired", row="forward: seg2img", method="ours - pd", setting="C",
                          metric=RMSE)
    assert difference["estimate"] == pytest.approx(ours["estimate"] - pd["estimate"]) != 0.0


class Oracle:
    """A known-perfect 'model': answers each query of the protocol's episodes with that episode's ground truth."""

    def __init__(self, pipe, world: ShapesWorld, protocol):
        self.model, self.image_size, self.device = pipe.model, pipe.image_size, pipe.device
        tasks = {*(t for group in protocol.tasks.values() for t in group), protocol.k_shot_task}
        episodes = [world.episode(seed, task=task, k=protocol.k) for task in tasks for seed in protocol.seeds]
        self.answers = {episode.query.numpy().tobytes(): episode.target for episode in episodes}

    def resolve_guidance(self, scale_context, scale_prompt):
        return 3.0, 3.0

    def __call__(self, query, **ignored):
        return torch.stack([self.answers[q.numpy().tobytes()] for q in query])


def test_a_perfect_model_scores_perfectly(pipe, shapes_world):
    result = run_shapes({"ours": pipe, "oracle": Oracle(pipe, shapes_world, TINY)}, TINY, world=shapes_world,
                        progress=False)
    perfect = {RMSE: 0.0, SHAPE_MSE: 0.0, BINDING: 1.0}
    for cell in cells_of(result, method="oracle"):
        if cell["metric"] in perfect:
            assert (cell["estimate"], cell["ci_low"], cell["ci_high"]) == pytest.approx(
                (perfect[cell["metric"]],) * 3, abs=1e-12), cell
        elif cell["metric"] == FD_OURS:
            assert cell["estimate"] == pytest.approx(0.0, abs=1e-6) and cell["ci_high"] < 1e-6, cell
        else:  # layout fidelity: the ground truth's own
            truth = one_cell(result, table=cell["table"], row=cell["row"], method=GROUND_TRUTH, metric=LAYOUT)
            assert cell["estimate"] == truth["estimate"], cell
    beaten = one_cell(result, table="paired", row="forward: seg2img", method="ours - oracle", setting="C",
                      metric=RMSE)
    assert beaten["ci_low"] > 0, "the untrained model is worse than perfect, and not by noise"


# --- GlyphWorld ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glyph_world():
    return GlyphWorld(fonts=MPL_FONTS, size=SIZE, progress=False)


def test_glyph_tables_score_the_checkpoints_against_both_glyph_baselines(glyph_world):
    glyph_pipe = ContextDiffusionPipeline(tiny_model(prompts=False))
    result = run_glyphs({"ours": glyph_pipe}, TINY, worlds={"font2font": glyph_world},
                        training_world=glyph_world, progress=False)
    glyphs = cells_of(result, table="glyphs")
    assert {(c["method"], c["setting"]) for c in glyphs} == {("ours", "C"), (RETURN_QUERY, NO_SETTING),
                                                             (NEAREST_FONT, NO_SETTING)}
    assert {c["metric"] for c in glyphs} == {IOU, RMSE}
    batch = collate_episodes([glyph_world.episode(seed, k=TINY.k) for seed in TINY.seeds])
    query = one_cell(result, table="glyphs", method=RETURN_QUERY, metric=IOU)
    assert query["estimate"] == pytest.approx(glyph_iou(batch.query, batch.target).mean().item())
    # looking the font up among the very fonts of the test episodes finds each target exactly
    nearest = one_cell(result, table="glyphs", method=NEAREST_FONT, metric=IOU)
    assert (nearest["estimate"], nearest["ci_low"], nearest["ci_high"]) == (1.0, 1.0, 1.0)
    assert torch.equal(nearest_font_answers(glyph_world, glyph_world, TINY.seeds, TINY.k), batch.target)
    assert {c["row"] for c in cells_of(result, table="k_shot")} == {"k=1", "k=2"}


def test_glyph_worlds_are_both_test_splits_and_any_font_folder():
    worlds = glyph_test_worlds(TINY, SIZE, fonts=MPL_FONTS, progress=False)
    assert list(worlds) == ["font2font", TEXT_FONTS_ROW, "font2font_ttf"]
    assert [w.split for w in worlds.values()] == ["test", "test-text", "all"]


# --- files and command -----------------------------------------------------------------------------------------------
def test_the_files_written_and_their_columns(experiment, tmp_path):
    written = write_experiment(experiment, tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(["forward.csv", "reverse.csv", "out_of_domain.csv", "k_shot.csv", "paired.csv",
                            "grid_seg2img.png", "grid_img2edge.png", "grid_scribble2img.png", "k_shot.png",
                            "claims.md", "results.json"])
    for path in tmp_path.glob("*.csv"):
        with path.open() as handle:
            rows = list(csv.DictReader(handle))
        assert tuple(rows[0]) == CSV_COLUMNS and {r["table"] for r in rows} == {path.stem}
    for path in tmp_path.glob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["protocol"]["name"] == "tiny" and list(results["checkpoints"]) == ["ours", "twin", "pd"]
    assert results["checkpoints"]["pd"]["baseline"] == "prompt-diffusion"
    assert results["checkpoints"]["ours"]["combine"] == "sum" and results["wall_time_s"] > 0
    assert {"torch", "numpy", "python"} <= set(results["versions"]) and len(results["cells"]) == len(experiment.cells)
    sample = next(e for e in results["per_episode"] if e["row"] == "seg2img" and e["metric"] == RMSE)
    assert len(sample["values"]) == TINY.episodes
    assert FD_OURS not in {e["metric"] for e in results["per_episode"]}


@pytest.fixture(scope="module")
def checkpoint(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "shapes"
    pipe.model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    fields = {k: v for k, v in dataclasses.asdict(TINY).items() if k != "name"}
    path = tmp_path_factory.mktemp("protocols") / "protocols.json"
    path.write_text(json.dumps({"protocols": {"tiny": fields}}))
    return path


def test_eval_protocol_writes_the_folder(checkpoint, manifest, tmp_path, capsys):
    out = tmp_path / "results"
    result = main_eval(["--protocol", "tiny", "--protocol-file", str(manifest), "--checkpoint", f"ours={checkpoint}",
                        "--checkpoint", f"again={checkpoint}", "--out", str(out), "--no-progress"])
    assert isinstance(result, Experiment) and (out / "paired.csv").is_file() and (out / "k_shot.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["checkpoints"]["again"]["path"] == str(checkpoint)
    printed = capsys.readouterr().out
    assert "forward: RMSE" in printed and f"wrote {out / 'results.json'}" in printed
    assert "the paper's claims at toy scale" in printed and "more context helps: k = 3 beats k = 1" not in printed


@pytest.mark.parametrize("arguments, message", [
    (["--protocol", "fast", "--checkpoint", "ours={ckpt}"], "unknown protocol 'fast'"),
    (["--protocol", "tiny", "--checkpoint", "ours"], "must be LABEL=PATH"),
    (["--protocol", "tiny", "--checkpoint", "ours="], "must be LABEL=PATH"),
    (["--protocol", "tiny", "--checkpoint", "ours={ckpt}", "--checkpoint", "ours={ckpt}"], "given twice"),
    (["--protocol", "tiny", "--checkpoint", "ours={ckpt}_missing"], "no folder at"),
    (["--protocol", "tiny"], "at least one --checkpoint"),
    (["--protocol", "tiny", "--checkpoint", "ours={ckpt}", "--out", "{file}"], "names a folder"),
    (["--protocol", "tiny", "--checkpoint", "ours={ckpt}", "--fonts", str(MPL_FONTS)], "for GlyphWorld"),
])
def test_eval_protocol_explains_bad_input(arguments, message, checkpoint, manifest, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [a.format(ckpt=checkpoint, file=a_file) for a in arguments] + ["--protocol-file", str(manifest)]
    with pytest.raises(SystemExit):
        main_eval(argv + ["--out", str(tmp_path / "out")] if "--out" not in argv else argv)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoints_of_different_worlds_are_refused(pipe):
    glyph_model = tiny_model(prompts=False)
    glyph_model.config = dataclasses.replace(glyph_model.config, world="glyphs")
    with pytest.raises(ValueError, match="different worlds.*ours: shapes at 32 px, glyphs: glyphs at 32 px"):
        common_world({"ours": pipe, "glyphs": ContextDiffusionPipeline(glyph_model)})
    assert common_world({"ours": pipe, "twin": pipe}) == "shapes"


def test_checkpoint_labels_keep_their_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    parsed = parse_checkpoints([f"pd={tmp_path / 'b'}", f" ours = {tmp_path / 'a'}"])
    assert list(parsed) == ["pd", "ours"] and parsed["ours"] == tmp_path / "a"

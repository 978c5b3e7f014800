"""claims.py: a verdict per claim from paired intervals, FD-ours by its two intervals, only the claims a results
folder can test, and a clear error where there are no results."""
from pathlib import Path

import numpy as np
import pytest

from ctxdiff_from_scratch.claims import (AGREES, OPPOSITE, UNRESOLVED, check_claims, format_claims, labels,
                                         load_results, verdict)
from ctxdiff_from_scratch.experiments import FD_OURS, IOU, NEAREST_FONT, NO_SETTING, RETURN_QUERY, RMSE
from ctxdiff_from_scratch.metrics import root_mean

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROTOCOL = {"bootstrap_level": 0.95, "bootstrap_resamples": 400, "bootstrap_seed": 0}


def results_of(world: str, values: dict, fd: dict | None = None, baseline: bool = True) -> dict:
    """A results.json with per-episode values {(table, row, method, setting, metric): array} and their cells; FD-ours
    cells straight from ``fd`` {(table, row, method, setting): (estimate, low, high)}."""
    checkpoints = {"ours": {"baseline": "context-diffusion"}}
    if baseline:
        checkpoints["pd"] = {"baseline": "prompt-diffusion"}
    cells, per_episode = [], []
    for (table, row, method, setting, metric), v in values.items():
        estimate = root_mean(v) if metric == RMSE else float(np.mean(v))
        key = dict(table=table, row=row, method=method, setting=setting, metric=metric)
        cells.append({**key, "estimate": estimate, "ci_low": estimate, "ci_high": estimate, "episodes": len(v)})
        per_episode.append({**key, "values": list(v)})
    for (table, row, method, setting), (estimate, low, high) in (fd or {}).items():
        cells.append(dict(table=table, row=row, method=method, setting=setting, metric=FD_OURS, estimate=estimate,
                          ci_low=low, ci_high=high, episodes=8))
    return {"world": world, "protocol": PROTOCOL, "checkpoints": checkpoints, "cells": cells,
            "per_episode": per_episode}


def shapes_values(ours_forward: np.ndarray, pd_forward: np.ndarray) -> dict:
    rng = np.random.default_rng(0)
    noise = lambda: rng.uniform(0.01, 0.02, size=len(ours_forward))  # noqa: E731
    return {("forward", "forward", "ours", "C", RMSE): ours_forward, ("forward", "forward", "pd", "C", RMSE): pd_forward,
            ("forward", "forward", "ours", "P", RMSE): ours_forward + 0.02,
            ("forward", "forward", "ours", "C+P", RMSE): ours_forward * 0.8,
            ("reverse", "reverse", "ours", "C", RMSE): noise(), ("reverse", "reverse", "pd", "C", RMSE): noise() + 0.1,
            ("k_shot", "k=1", "ours", "C", RMSE): ours_forward, ("k_shot", "k=3", "ours", "C", RMSE): ours_forward}


def by_claim(rows: list[dict]) -> dict[str, dict]:
    return {r["claim"]: r for r in rows}


def test_verdict_reads_the_interval_on_the_papers_side():
    assert verdict(-0.3, -0.1, lower=True) == AGREES and verdict(0.1, 0.3, lower=False) == AGREES
    assert verdict(0.1, 0.3, lower=True) == OPPOSITE and verdict(-0.3, -0.1, lower=False) == OPPOSITE
    assert verdict(-0.1, 0.1, lower=True) == UNRESOLVED == verdict(-0.1, 0.1, lower=False)


def test_shapes_claims_agree_oppose_or_stay_unresolved():
    ours = np.linspace(0.01, 0.03, 32)
    fd = {("forward", "forward", "ours", "C"): (1.0, 0.8, 1.2), ("forward", "forward", "pd", "C"): (1.1, 0.9, 1.3)}
    rows = by_claim(check_claims(results_of("shapes", shapes_values(ours, ours * 2), fd)))
    forward = rows["context alone, forward tasks: ours draws closer to the truth than PD-style"]
    assert forward["verdict"] == AGREES and forward["ci_high"] < 0 and forward["compared"] == "ours C - pd C"
    assert forward["first"] == pytest.approx(root_mean(ours)) and forward["second"] == pytest.approx(root_mean(ours * 2))
    assert rows["context alone, reverse tasks: ours maps images to their maps better than PD-style"]["verdict"] == AGREES
    assert rows["the context carries the style: ours with context alone beats ours with the prompt alone"][
        "verdict"] == AGREES
    assert rows["a prompt on top of the context helps further"]["verdict"] == AGREES
    # k = 3 exactly as good as k = 1: an interval [0, 0] holds 0
    assert rows["more context helps: k = 3 beats k = 1 (edge2img)"]["verdict"] == UNRESOLVED
    # FD-ours intervals that overlap decide nothing; apart, they decide
    fd_claim = "context alone, forward tasks: ours' images are distributed closer to the truth"
    assert rows[fd_claim]["verdict"] == UNRESOLVED
    fd[("forward", "forward", "pd", "C")] = (2.0, 1.5, 2.5)
    assert by_claim(check_claims(results_of("shapes", shapes_values(ours, ours * 2), fd)))[fd_claim]["verdict"] == AGREES
    # the baseline better than ours: the claim against it is opposite
    rows = by_claim(check_claims(results_of("shapes", shapes_values(ours * 2, ours), fd)))
    assert rows["context alone, forward tasks: ours draws closer to the truth than PD-style"]["verdict"] == OPPOSITE


def test_only_the_claims_the_results_can_test():
    ours = np.linspace(0.01, 0.03, 16)
    values = shapes_values(ours, ours)
    values = {k: v for k, v in values.items() if k[2] != "pd"}
    rows = check_claims(results_of("shapes", values, baseline=False))
    assert rows and not any("PD-style" in r["claim"] for r in rows)
    assert not any("out-of-domain" in r["claim"] for r in rows)  # no out_of_domain cells
    only_pd = results_of("shapes", values)
    only_pd["checkpoints"] = {"pd": {"baseline": "prompt-diffusion"}}
    assert labels(only_pd) == (None, "pd") and check_claims(only_pd) == []
    assert "no claim of the paper to check" in format_claims([])


def test_glyph_claims_compare_with_both_baselines():
    rng = np.random.default_rng(1)
    values = {("glyphs", "font2font", "ours", "C", IOU): rng.uniform(0.5, 0.7, 24),
              ("glyphs", "font2font", RETURN_QUERY, NO_SETTING, IOU): rng.uniform(0.2, 0.4, 24),
              ("glyphs", "font2font", NEAREST_FONT, NO_SETTING, IOU): rng.uniform(0.6, 0.8, 24)}
    rows = by_claim(check_claims(results_of("glyphs", values, baseline=False)))
    assert rows["font2font: ours' glyph IoU beats return the query"]["verdict"] == AGREES
    assert rows["font2font: ours' glyph IoU beats nearest training font"]["verdict"] == OPPOSITE
    table = format_claims(list(rows.values()))
    assert table.count("\n") == 3 and "**agrees**" in table and "**opposite**" in table and "95% interval" in table


def test_load_results_explains_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_results(tmp_path)


@pytest.mark.parametrize("name, protocol", [("shapes", "full"), ("glyphs", "full"), ("combine", "combine")])
def test_the_committed_claims_are_those_of_the_committed_results(name, protocol):
    """results/<name>/claims.md (what the README and notebook 09 quote) is what claims.py reads from results.json."""
    folder = RESULTS / name
    results = load_results(folder)
    assert results["protocol"]["name"] == protocol
    assert (folder / "claims.md").read_text() == format_claims(check_claims(results)) + "\n"

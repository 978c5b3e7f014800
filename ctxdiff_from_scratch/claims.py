"""The paper's claims, each checked against an ``eval --protocol`` results folder: agrees, opposite or unresolved.

Context Diffusion (Najdenkoska et al. 2023) claims that the visual context alone carries the task and the style,
where Prompt Diffusion cannot use it (Table 2, setting C: HED->img FID 17.7 against 22.5, img->HED RMSE 0.11 against
0.33), that more context images help (Table 3: 1 -> 3 shots raise the win rate from 24.9% to 55.1%) and that it
generalises to out-of-domain queries. At toy scale each claim becomes a difference between two cells of the results,
measured on the same episodes, with a paired bootstrap interval (metrics.paired_bootstrap_ci): the claim **agrees**
when the interval excludes 0 on the paper's side, is **opposite** when it excludes 0 on the other side, and is
**unresolved** when it holds 0. FD-ours pools all episodes into one statistic, so its claim compares the two cells'
own intervals instead (agrees when they do not overlap and ours is lower).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .experiments import (FD_OURS, IOU, MEAN_COLOUR_METHOD, NEAREST_FONT, NO_SETTING, RETURN_QUERY, RMSE,
                          STATISTICS, Key, column_name)
from .metrics import paired_bootstrap_ci

AGREES, OPPOSITE, UNRESOLVED = "agrees", "opposite", "unresolved"
PD_BASELINE = "prompt-diffusion"


@dataclass(frozen=True)
class Claim:
    """One claim as a difference ``first - second`` of a metric; ``lower``: the paper's side is below 0."""

    claim: str
    paper: str
    metric: str
    first: Key
    second: Key
    lower: bool = True


def load_results(folder: str | Path) -> dict:
    """The results.json that ``eval --protocol NAME --out folder`` wrote."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {folder}; run `python -m ctxdiff_from_scratch eval --protocol "
                                f"full --checkpoint ours=... --out {folder}` first.")
    return json.loads(path.read_text())


def labels(results: dict) -> tuple[str | None, str | None]:
    """(ours, the Prompt-Diffusion-style baseline): the first Context Diffusion checkpoint and the first checkpoint
    trained with ``--baseline prompt-diffusion``, each None when the results hold none."""
    kinds = {label: info["baseline"] for label, info in results["checkpoints"].items()}
    ours = next((label for label, kind in kinds.items() if kind != PD_BASELINE), None)
    return ours, next((label for label, kind in kinds.items() if kind == PD_BASELINE), None)


def shapes_claims(ours: str, pd: str | None) -> list[Claim]:
    """The ShapesWorld claims; those against the baseline only when results hold one."""
    claims = []
    if pd is not None:
        claims += [
            Claim("context alone, forward tasks: ours draws closer to the truth than PD-style", "Table 2, C: HED->img "
                  "FID 17.7 vs 22.5", RMSE, Key("forward", "forward", ours, "C", RMSE),
                  Key("forward", "forward", pd, "C", RMSE)),
            Claim("context alone, forward tasks: ours' images are distributed closer to the truth", "Table 2, C: "
                  "HED->img FID 17.7 vs 22.5", FD_OURS, Key("forward", "forward", ours, "C", FD_OURS),
                  Key("forward", "forward", pd, "C", FD_OURS)),
            Claim("context alone, reverse tasks: ours maps images to their maps better than PD-style", "Table 2, C: "
                  "img->HED RMSE 0.11 vs 0.33", RMSE, Key("reverse", "reverse", ours, "C", RMSE),
                  Key("reverse", "reverse", pd, "C", RMSE)),
            Claim("out-of-domain queries, context alone: ours beats PD-style", "abstract: holds on out-of-domain "
                  "queries", RMSE, Key("out_of_domain", "out_of_domain", ours, "C", RMSE),
                  Key("out_of_domain", "out_of_domain", pd, "C", RMSE)),
        ]
    claims += [
        Claim("the context carries the style: ours with context alone beats ours with the prompt alone", "abstract, "
              "Table 2: the context alone carries task and style", RMSE, Key("forward", "forward", ours, "C", RMSE),
              Key("forward", "forward", ours, "P", RMSE)),
        Claim("a prompt on top of the context helps further", "Table 2: both conditions (C+P)", RMSE,
              Key("forward", "forward", ours, "C+P", RMSE), Key("forward", "forward", ours, "C", RMSE)),
        Claim("more context helps: k = 3 beats k = 1 (edge2img)", "Table 3: 1 -> 3 shots, win rate 24.9% -> 55.1%",
              RMSE, Key("k_shot", "k=3", ours, "C", RMSE), Key("k_shot", "k=1", ours, "C", RMSE)),
        Claim("out-of-domain queries: ours with context beats painting its mean colour", "abstract: holds on "
              "out-of-domain queries", RMSE, Key("out_of_domain", "out_of_domain", ours, "C", RMSE),
              Key("out_of_domain", "out_of_domain", MEAN_COLOUR_METHOD, NO_SETTING, RMSE)),
    ]
    return claims


def glyph_claims(ours: str, rows: list[str]) -> list[Claim]:
    """GlyphWorld's checks (the paper has no fonts): ours beats both glyph baselines on each test split, and more
    context helps on the first."""
    baselines = [Claim(f"{row}: ours' glyph IoU beats {baseline}", "- (fonts: this project's test of style)", IOU,
                       Key("glyphs", row, ours, "C", IOU), Key("glyphs", row, baseline, NO_SETTING, IOU),
                       lower=False)
                 for row in rows for baseline in (RETURN_QUERY, NEAREST_FONT)]
    return baselines + [Claim(f"more context helps: k = 3 beats k = 1 ({rows[0]})", "Table 3: 1 -> 3 shots, win "
                              "rate 24.9% -> 55.1%", RMSE, Key("k_shot", "k=3", ours, "C", RMSE),
                              Key("k_shot", "k=1", ours, "C", RMSE))]


def per_episode(results: dict) -> dict[Key, np.ndarray]:
    return {Key(e["table"], e["row"], e["method"], e["setting"], e["metric"]): np.asarray(e["values"])
            for e in results["per_episode"]}


def cell_interval(results: dict, key: Key) -> tuple[float, float, float]:
    found = [c for c in results["cells"] if Key(c["table"], c["row"], c["method"], c["setting"], c["metric"]) == key]
    if not found:
        raise KeyError(f"results hold no cell {key}.")
    return found[0]["estimate"], found[0]["ci_low"], found[0]["ci_high"]


def cell_name(key: Key, other: Key) -> str:
    """A cell's column, led by its row where the other cell of a claim has another row (k=3 ours C - k=1 ours C)."""
    name = column_name(key.method, key.setting)
    return name if key.row == other.row else f"{key.row} {name}"


def verdict(low: float, high: float, lower: bool) -> str:
    """Where an interval of ``first - second`` lies against 0, read on the paper's side."""
    if high < 0 or low > 0:
        return AGREES if (high < 0) == lower else OPPOSITE
    return UNRESOLVED


def check(claim: Claim, results: dict, samples: dict[Key, np.ndarray]) -> dict:
    """One claim's row: both estimates, the difference's interval (or both cells' for FD-ours) and the verdict."""
    level = results["protocol"]["bootstrap_level"]
    first, second = cell_interval(results, claim.first), cell_interval(results, claim.second)
    if claim.metric == FD_OURS:
        apart = first[2] < second[1] or first[1] > second[2]
        low, high = (first[1] - second[2], first[2] - second[1])  # the widest difference the two intervals allow
        found = verdict(low, high, claim.lower) if apart else UNRESOLVED
        difference = (first[0] - second[0], low, high)
    else:
        protocol = results["protocol"]
        difference = paired_bootstrap_ci(samples[claim.first], samples[claim.second], STATISTICS[claim.metric],
                                         protocol["bootstrap_resamples"], level, protocol["bootstrap_seed"])
        found = verdict(difference[1], difference[2], claim.lower)
    return {"claim": claim.claim, "paper": claim.paper, "metric": claim.metric,
            "compared": f"{cell_name(claim.first, claim.second)} - {cell_name(claim.second, claim.first)}",
            "first": first[0],
            "second": second[0], "difference": difference[0], "ci_low": difference[1], "ci_high": difference[2],
            "level": level, "verdict": found}


def check_claims(results: dict) -> list[dict]:
    """Every claim the results can test, checked: the world's claims whose two cells the results hold (those
    against the PD-style baseline only beside one, k-shot only where the protocol ran k = 1 and 3)."""
    ours, pd = labels(results)
    if ours is None:
        return []
    if results["world"] == "shapes":
        claims = shapes_claims(ours, pd)
    else:
        claims = glyph_claims(ours, list(dict.fromkeys(c["row"] for c in results["cells"] if c["table"] == "glyphs")))
    present = {Key(c["table"], c["row"], c["method"], c["setting"], c["metric"]) for c in results["cells"]}
    samples = per_episode(results)
    return [check(claim, results, samples) for claim in claims if {claim.first, claim.second} <= present]


def format_claims(rows: list[dict]) -> str:
    """The checked claims as a Markdown table: claim, paper, both estimates, the difference with its interval."""
    if not rows:
        return "No Context Diffusion checkpoint in these results: no claim of the paper to check."
    level = f"{rows[0]['level']:.0%}"
    lines = [f"| claim | paper | metric: a - b | a | b | difference [{level} interval] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        interval = f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        lines.append(f"| {r['claim']} | {r['paper']} | {r['metric']}: {r['compared']} | {r['first']:.3f} | "
                     f"{r['second']:.3f} | {interval} | **{r['verdict']}** |")
    return "\n".join(lines)

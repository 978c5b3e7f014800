"""Has a trained model memorised its fixed training pool? The trainer's memorisation probe, run after the fact.

A run without ``--fresh-per-step`` trains on a fixed pool of episodes (``episode_cache.py``: seeds 0, 1, 2, ...
spread over the k groups) and sees each one many times. This script rebuilds the first n episodes of the pool's
largest-k group from the run's own settings, draws n episodes the model never saw, and compares Eq. 2's loss on the
two (``train.MemorisationProbe``: timesteps over the noisier half of the schedule, and t = T - 1 alone, the model's
conditional mean). The two sets differ in difficulty by a few hundredths of loss by chance, so a gap far above that
is memorising; the pool size and k's are read from the run summary in the model folder (``stage2_summary.json`` or
``train_summary.json``) unless given. The episodes must be the ones the model was trained on: for a GlyphWorld model
trained on another font set than today's train split (the shipped one predates the text-font packages), pass that
set as ``--fonts FOLDER`` (its files in the training world's order, e.g. numbered links).

Run: ``.venv/bin/python benchmarks/pool_memorisation.py --checkpoint data/checkpoints/glyphs
[--checkpoint data/checkpoints/shapes] [--episodes 64]`` (a few seconds per model on 2 threads).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ctxdiff_from_scratch.data import GlyphWorld, make_world
from ctxdiff_from_scratch.episode_cache import encode_episodes
from ctxdiff_from_scratch.model import ContextDiffusionModel
from ctxdiff_from_scratch.train import PROBE_EPISODES, MemorisationProbe

SUMMARIES = ("stage2_summary.json", "train_summary.json")  # a two-stage model's stage 2, a joint or single run's


def training_pool(folder: Path) -> tuple[int, tuple[int, ...], int]:
    """(pool_size, k_choices, fresh_per_step) of the run that trained the model in ``folder``."""
    for name in SUMMARIES:
        if (folder / name).is_file():
            config = json.loads((folder / name).read_text())["config"]
            return config["pool_size"], tuple(config["k_choices"]), config.get("fresh_per_step", 0)
    raise FileNotFoundError(f"no run summary ({' or '.join(SUMMARIES)}) in {folder}: pass --pool-size and --k.")


def pool_memorisation(folder: Path, episodes: int, pool_size: int | None = None,
                      k_choices: tuple[int, ...] | None = None, fonts: Path | None = None) -> dict:
    """The probe's losses and gaps for the model in ``folder``, with what it was measured on."""
    fresh = 0
    if pool_size is None or k_choices is None:
        recorded_size, recorded_ks, fresh = training_pool(folder)
        pool_size, k_choices = pool_size or recorded_size, k_choices or recorded_ks
    model = ContextDiffusionModel.from_pretrained(folder)
    model.eval()
    size = model.config.image_size
    if fonts is not None and model.config.world != "glyphs":
        raise ValueError(f"--fonts is the training font set of a GlyphWorld model; {folder} is a "
                         f"{model.config.world} model.")
    world = (GlyphWorld("all", size, fonts=fonts, progress=False) if fonts is not None
             else make_world(model.config.world, "train", size))
    k = max(k_choices)
    group, per_group = k_choices.index(k), pool_size // len(k_choices)
    n = min(episodes, per_group)
    seen = encode_episodes(model, world, [i * len(k_choices) + group for i in range(n)], k)  # the pool's first n
    probe = MemorisationProbe.build(model, world, k, n)
    losses = probe.losses(model.denoiser, model.schedule, seen, model.device)
    return {"world": model.config.world, "episodes_from": str(fonts) if fonts else "train split",
            "pool_size": pool_size, "k": k, "episodes": n, "fresh_per_step": fresh, **losses}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, type=Path, help="model folder; repeatable")
    parser.add_argument("--episodes", type=int, default=PROBE_EPISODES, help="episodes in each of the two sets")
    parser.add_argument("--pool-size", type=int, default=None, help="default: the run summary's")
    parser.add_argument("--k", type=int, nargs="+", default=None, help="the run's k choices; default: the summary's")
    parser.add_argument("--fonts", type=Path, default=None,
                        help="GlyphWorld models: the font set they were trained on (default: today's train split)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for folder in args.checkpoint:
        try:
            r = results[str(folder)] = pool_memorisation(folder, args.episodes, args.pool_size,
                                                         tuple(args.k) if args.k else None, args.fonts)
        except (ValueError, FileNotFoundError) as error:
            parser.error(str(error))
        print(f"{folder} ({r['world']} {r['episodes_from']}, pool {r['pool_size']}, k = {r['k']}, {r['episodes']} + "
              f"{r['episodes']} "
              f"episodes): Eq. 2 loss t >= T/2 seen {r['loss_seen']:.4f} unseen {r['loss_unseen']:.4f} "
              f"(gap {r['gap']:+.4f}); t = T - 1 seen {r['loss_seen_T']:.4f} unseen {r['loss_unseen_T']:.4f} "
              f"(gap {r['gap_T']:+.4f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

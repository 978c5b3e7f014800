"""How fast the data worlds make episodes, on one CPU core.

Prints episodes per second at k = 3 for ShapesWorld (the training mix and each task family) and for GlyphWorld.
Run: ``.venv/bin/python benchmarks/data_throughput.py [--seconds 2] [--size 64]``. Two columns: episodes per
wall-clock second, and per CPU second of this process (closer to a free core's rate when the machine is shared). Both
depend on the machine: compare numbers from one run, not across runs. GlyphWorld's start-up (rendering its fonts)
is not timed.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from ctxdiff_from_scratch.data.shapes import FORWARD_TASKS, OUT_OF_DOMAIN_TASKS, REVERSE_TASKS, ShapesWorld

WARMUP_EPISODES = 50  # fills the style painter's pattern cache before timing starts


def episodes_per_second(make: Callable[[int], object], seconds: float) -> tuple[float, float]:
    """Call ``make(seed)`` for seeds 0, 1, 2, ... for ``seconds`` of wall-clock time.

    Returns (calls per wall-clock second, calls per CPU second of this process). On a machine shared with other jobs
    the first is what you get right now; the second is closer to what one free core would give.
    """
    for seed in range(WARMUP_EPISODES):
        make(10**9 + seed)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        make(count)
        count += 1
    return count / elapsed, count / (time.process_time() - cpu_start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing length per row")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--k", type=int, default=3, help="context images per episode")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core: the number a single DataLoader worker would see

    shapes = ShapesWorld("train", size=args.size)
    rows: list[tuple[str, Callable[[int], object]]] = [
        ("ShapesWorld train mix (task=None)", lambda s: shapes.episode(s, None, args.k))]
    families = (("forward", FORWARD_TASKS), ("reverse", REVERSE_TASKS), ("out-of-domain", OUT_OF_DOMAIN_TASKS))
    for family, tasks in families:
        rows.append((f"ShapesWorld {family} ({', '.join(tasks)})",
                     lambda s, tasks=tasks: shapes.episode(s, tasks[s % len(tasks)], args.k)))

    print(f"episodes per second on one thread, k={args.k}, {args.size}x{args.size}, {args.seconds:.1f} s per row")
    print(f"{'wall':>8}  {'CPU':>8}  world")
    for name, make in rows:
        wall, cpu = episodes_per_second(make, args.seconds)
        print(f"{wall:8.0f}  {cpu:8.0f}  {name}")

    try:
        from ctxdiff_from_scratch.data.glyphs import GlyphWorld

        glyphs = GlyphWorld("train", size=args.size)
        wall, cpu = episodes_per_second(lambda s: glyphs.episode(s, k=args.k), args.seconds)
        print(f"{wall:8.0f}  {cpu:8.0f}  GlyphWorld ({glyphs.num_fonts} fonts)")
    except Exception as error:  # the benchmark still reports ShapesWorld when GlyphWorld cannot run here
        print(f"     n/a       n/a  GlyphWorld is missing or failed to start: {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()

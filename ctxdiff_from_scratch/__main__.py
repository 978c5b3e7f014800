"""Command line: ``python -m ctxdiff_from_scratch <command> [options]`` (``--help`` on any command)."""
from __future__ import annotations

import argparse
import sys

# Commands whose options live in their own module: (module, entry function, help); the rest of argv goes to it.
DELEGATED = {
    "train": ("ctxdiff_from_scratch.train", "main", "train the denoiser (stage 1, stage 2 or joint) of a world"),
    "sample": ("ctxdiff_from_scratch.evaluate", "main_sample", "generate images from a query and context images"),
    "eval": ("ctxdiff_from_scratch.evaluate", "main_eval", "measure RMSE / glyph IoU on a test split (C+P, C, P)"),
    "autoencoder": ("ctxdiff_from_scratch.train_autoencoder", "main", "train the tiny autoencoder of a world"),
    "encoders": ("ctxdiff_from_scratch.train_encoders", "main",
                 "train the CLIP-style text and image encoders of a world"),
}


def _demo(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch demo",
                                     description="Write the demo figures (episode galleries) to a folder.")
    parser.add_argument("--out", default="outputs", help="folder for the figures (default: outputs)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (default: 0)")
    parser.add_argument("--k", type=int, default=3, help="context images per episode (default: 3)")
    args = parser.parse_args(argv)
    from .demo import write_episode_gallery

    for path in write_episode_gallery(args.out, seed=args.seed, k=args.k):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "write the demo figures to outputs/", **{k: v[2] for k, v in DELEGATED.items()}}
    usage = "\n".join(f"  {name:<12} {text}" for name, text in commands.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m ctxdiff_from_scratch <command> [options]\n\ncommands:\n{usage}\n\n"
              "Run `python -m ctxdiff_from_scratch <command> --help` for a command's options.")
        return
    command, rest = argv[0], argv[1:]
    if command == "demo":
        _demo(rest)
    elif command in DELEGATED:
        import importlib

        module, function, _ = DELEGATED[command]
        getattr(importlib.import_module(module), function)(rest)
    else:
        sys.exit(f"unknown command {command!r}; choose one of: {', '.join(commands)}.")


if __name__ == "__main__":
    main()

"""Command line: ``python -m ctxdiff_from_scratch <command> [options]`` (``--help`` on any command)."""
from __future__ import annotations

import sys

# Commands whose options live in their own module: (module, entry function, help); the rest of argv goes to it.
DELEGATED = {
    "demo": ("ctxdiff_from_scratch.demo", "main", "write the demo figures (samples of the shipped models, galleries)"),
    "train": ("ctxdiff_from_scratch.train", "main", "train the denoiser (stage 1, stage 2 or joint) of a world"),
    "sample": ("ctxdiff_from_scratch.evaluate", "main_sample", "generate images from a query and context images"),
    "eval": ("ctxdiff_from_scratch.evaluate", "main_eval", "measure RMSE / glyph IoU on a test split (C+P, C, P)"),
    "tune-guidance": ("ctxdiff_from_scratch.tune_guidance", "main",
                      "choose a checkpoint's default context guidance on unseen train episodes"),
    "autoencoder": ("ctxdiff_from_scratch.train_autoencoder", "main", "train the tiny autoencoder of a world"),
    "encoders": ("ctxdiff_from_scratch.train_encoders", "main",
                 "train the CLIP-style text and image encoders of a world"),
    "fonts": ("ctxdiff_from_scratch.data.font_bundle", "main",
              "check GlyphWorld's bundled training fonts (or rebuild them from Debian's)"),
    "colab": ("ctxdiff_from_scratch.colab", "main", "write the Colab badge and install cell into every notebook"),
    "sd-train": ("ctxdiff_from_scratch.stable_diffusion.train", "main",
                 "train Context Diffusion on pre-trained CLIP + Stable Diffusion + ControlNet, on a folder"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {name: text for name, (_, _, text) in DELEGATED.items()}
    usage = "\n".join(f"  {name:<14} {text}" for name, text in commands.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m ctxdiff_from_scratch <command> [options]\n\ncommands:\n{usage}\n\n"
              "Run `python -m ctxdiff_from_scratch <command> --help` for a command's options.")
        return
    command, rest = argv[0], argv[1:]
    if command in DELEGATED:
        import importlib

        module, function, _ = DELEGATED[command]
        getattr(importlib.import_module(module), function)(rest)
    else:
        sys.exit(f"unknown command {command!r}; choose one of: {', '.join(commands)}.")


if __name__ == "__main__":
    main()

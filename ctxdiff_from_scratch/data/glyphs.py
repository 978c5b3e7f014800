"""GlyphWorld: few-shot font style with real fonts -- a style that no prompt can describe, only examples can.

Task ``font2font``: the *query* is a character drawn in the reference font (DejaVu Sans); the *context* shows k other
characters of a target font; the *target* is the query character in the target font. The prompt is empty. The model
must read the font's style (weight, serifs, slant, proportions, decoration) from the context and apply it to a
character it has not seen in that font.

Images are (3, H, W) in [0, 1], dark glyph (0) on white (1); ink means value < 0.5. How glyphs are scaled, which fonts
are used for training and which are reserved for evaluation: see :mod:`ctxdiff_from_scratch.data.fonts`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .episode import Episode
from .fonts import (DEFAULT_CHARSET, INSTALL_HINT, font_family, font_files, held_out_families, reference_font_path,
                    render_charset, survey_fonts, text_test_fonts, training_fonts)

SPLITS = ("train", "test", "test-text", "all")


class GlyphWorld:
    """Episodes of the ``font2font`` task over a set of fonts, every glyph rendered once and kept in memory.

    split: "train" or "test" -- the 90% / 10% of the training packages' font *families*
        (:func:`fonts.held_out_families`); "test-text" -- the text fonts of ``fonts.TEXT_TEST_FONT_PACKAGES``, never
        trained on (``fonts`` must be None); "all" -- every font. Default: "train" for the Debian fonts, "all" for
        ``fonts=PATH``.
    size: image side in pixels.
    fonts: None -- the Debian fonts of the split (bundled in data/fonts/ and data/fonts-text-test/); a font file or
        a folder of fonts -- any fonts, e.g. for evaluation on fonts never used in training.
    charset: the characters drawn (default A-Z a-z 0-9). Fonts lacking any of them are dropped.
    progress: show a progress bar while rendering (20-50 ms per font: the 564 training files take about 25 s).

    ``report`` says how many font files were found, kept, and dropped for which reason; ``dropped`` lists them.
    """

    tasks = ("font2font",)
    train_tasks = ("font2font",)

    def __init__(self, split: str | None = None, size: int = 64, fonts: str | Path | None = None,
                 charset: str = DEFAULT_CHARSET, progress: bool = True) -> None:
        split = split or ("train" if fonts is None else "all")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if len(set(charset)) != len(charset) or len(charset) < 2:
            raise ValueError(f"charset needs at least 2 distinct characters, each once; got {charset!r}.")
        if split == "test-text" and fonts is not None:
            raise ValueError("split='test-text' is the bundled text-font test split; with fonts=PATH use split='all'.")
        if fonts is None:
            try:
                paths = text_test_fonts() if split == "test-text" else training_fonts()
            except FileNotFoundError as error:
                raise FileNotFoundError(f"GlyphWorld(split={split!r}) needs the Debian fonts: {INSTALL_HINT}."
                                        ) from error
        else:
            paths = font_files(fonts)
        if split in ("train", "test"):
            families = [font_family(p) for p in paths]
            held_out = held_out_families(paths, families)
            paths = [p for p, f in zip(paths, families) if (f in held_out) == (split == "test")]
        self.split, self.size, self.charset = split, size, charset
        self.reference_path = reference_font_path()
        self._reference = render_charset(self.reference_path, charset, size)  # (C + 1, S, S), last: .notdef
        survey = survey_fonts(paths, charset, size, self._reference, progress=progress)
        self._glyphs = survey.glyphs  # (F, C, S, S) uint8
        self.font_paths, self.font_names, self.families = survey.paths, survey.names, survey.families
        self.dropped = survey.dropped
        source = str(fonts) if fonts is not None else ("Debian text fonts never trained on" if split == "test-text"
                                                        else "Debian training fonts")
        self.report = f"GlyphWorld(split={split!r}, {source}): {survey.summary()}"
        if self.num_fonts == 0:
            raise ValueError(f"no usable fonts left: {self.report}. Pass a folder with ordinary text fonts.")

    @property
    def num_fonts(self) -> int:
        return self._glyphs.shape[0]

    def __repr__(self) -> str:
        return self.report

    def _char_index(self, char: str) -> int:
        if char not in self.charset:
            raise ValueError(f"{char!r} is not in this world's charset {self.charset!r}.")
        return self.charset.index(char)

    @staticmethod
    def _to_image(glyphs: np.ndarray) -> torch.Tensor:
        """uint8 (..., S, S) -> float (..., 3, S, S) in [0, 1], grey as RGB (NumPy: no torch threads per glyph)."""
        gray = glyphs.astype(np.float32) / 255.0
        return torch.from_numpy(np.repeat(gray[..., None, :, :], 3, axis=-3))  # (..., S, S) -> (..., 3, S, S)

    def render(self, font_index: int, char: str) -> torch.Tensor:
        """Character ``char`` in font ``font_index`` -> (3, S, S), dark on white."""
        if not 0 <= font_index < self.num_fonts:
            raise IndexError(f"font_index {font_index} out of range: this world has {self.num_fonts} fonts.")
        return self._to_image(self._glyphs[font_index, self._char_index(char)])

    def render_reference(self, char: str) -> torch.Tensor:
        """Character ``char`` in the reference font (the query of every episode) -> (3, S, S)."""
        return self._to_image(self._reference[self._char_index(char)])

    def _draw(self, seed: int, task: str | None, k: int) -> tuple[int, int, np.ndarray]:
        """The font index, the query's character index and the k context characters' indices of an episode, drawn
        as ``episode`` describes."""
        if task not in (None, *self.tasks):
            raise ValueError(f"GlyphWorld has tasks {self.tasks}, got {task!r}.")
        if not 0 <= k < len(self.charset):
            raise ValueError(f"k must be in [0, {len(self.charset) - 1}] (context characters differ from the "
                             f"query), got {k}.")
        rng = np.random.default_rng(seed)
        font = int(rng.integers(self.num_fonts))
        query = int(rng.integers(len(self.charset)))
        others = rng.permutation([i for i in range(len(self.charset)) if i != query])[:k]
        return font, query, others

    def episode_characters(self, seed: int, task: str | None = None, k: int = 3) -> tuple[int, str, str]:
        """(font index, query character, the k context characters) of ``episode(seed, task, k)``."""
        font, query, others = self._draw(seed, task, k)
        return font, self.charset[query], "".join(self.charset[i] for i in others)

    def context_sources(self, seed: int, task: str | None = None, k: int = 3) -> torch.Tensor:
        """The context characters of ``episode(seed, task, k)`` in the reference font -> (k, 3, S, S).

        An episode's context shows the target font only; with these, context image i and source i form the example
        pair (character in the reference font, the same character in the target font) that a Prompt-Diffusion-style
        model reads (``baselines/prompt_diffusion.py``).
        """
        _, _, others = self._draw(seed, task, k)
        return self._to_image(self._reference[others])  # (k, S, S) -> (k, 3, S, S)

    def episode(self, seed: int, task: str | None = None, k: int = 3) -> Episode:
        """One episode, deterministic in (split, fonts, seed, k).

        The seed picks the font and the query character first, then an order of the other characters whose first k
        are the context: episodes with the same seed and a larger k share font, query and the first contexts, which
        makes k-ablations direct comparisons.
        """
        font, query, others = self._draw(seed, task, k)
        return Episode(
            query=self._to_image(self._reference[query]),
            context=self._to_image(self._glyphs[font, others]),  # (k, S, S) -> (k, 3, S, S)
            target=self._to_image(self._glyphs[font, query]),
            prompt="",
            task="font2font",
        )

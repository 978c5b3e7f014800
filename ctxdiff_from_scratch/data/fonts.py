"""Finding, rendering and vetting fonts for :class:`~ctxdiff_from_scratch.data.glyphs.GlyphWorld`.

Which fonts may be used for what:

* **Training** uses only the fonts of the Debian packages in ``TRAINING_FONT_PACKAGES`` (:func:`training_fonts`):
  ``fonts-aenigma``'s display faces, the ``fonts-adf-*`` book faces, and about thirty packages of text faces (serif,
  sans, monospace, handwriting). They come from the copy bundled in ``data/fonts/`` (:mod:`.font_bundle`; no apt
  needed), or, where the bundle is absent (a wheel install), from the installed packages found through dpkg's own file
  lists (``/var/lib/dpkg/info/<package>.list``), so a font installed by anything else is never picked up. Their
  families are split 90/10 into ``train`` and ``test`` (see :func:`held_out_families`).
* The **text-font test split** (:func:`text_test_fonts`, ``GlyphWorld(split="test-text")``): the packages in
  ``TEXT_TEST_FONT_PACKAGES`` (Liberation, Go, Carlito, Caladea: everyday text faces), never trained on, bundled in
  ``data/fonts-text-test/``. The ``test`` split's families are unseen designs from the training packages' kinds; this
  one measures plain text fonts from elsewhere, where "return the query glyph" is a strong baseline.
* The **reference font** (DejaVu Sans, shipped inside matplotlib) draws the query glyphs of every episode.
* **Every other font is reserved for evaluation**: pass it explicitly with ``GlyphWorld(fonts=PATH)``.

How a glyph is drawn (:func:`render_charset`): dark ink (0) on white paper (1), so "ink" means value < 0.5. Each font
is scaled on its own so that its whole charset fits: the tallest extent over the charset (highest ascender to lowest
descender) or the widest glyph, whichever is larger, spans ``GLYPH_FILL`` of the canvas. All glyphs of one font share
one baseline, placed so that the font's vertical extent is centred; each glyph is centred horizontally on its own
bounding box. Relative sizes inside a font (x-height against cap height, descenders) are therefore kept -- they are
part of the style the model must read from the context -- while fonts with unusual em sizes are not cut off.
"""
from __future__ import annotations

import hashlib
import re
import string
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .edges import gaussian_blur

DEFAULT_CHARSET = string.ascii_uppercase + string.ascii_lowercase + string.digits  # A-Z a-z 0-9, 62 characters
GLYPH_FILL = 0.8  # the font's tallest extent (or widest glyph) spans 80% of the canvas
TEST_FAMILY_FRACTION = 0.1  # share of Debian font families held out as the test split
MIN_RECOGNISED = 0.15  # below this share of recognisable glyphs a font counts as symbols (chance is 5/62 = 0.08)
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
TRAINING_FONT_PACKAGES = (
    "fonts-aenigma", "fonts-adf-*",  # display faces; book faces
    # text faces, serif
    "fonts-ebgaramond", "fonts-gfs-didot", "fonts-oldstandard", "fonts-quattrocento", "fonts-sil-gentium",
    "fonts-levien-museum",
    # sans serif
    "fonts-cantarell", "fonts-comfortaa", "fonts-jura", "fonts-league-spartan", "fonts-yanone-kaffeesatz",
    "fonts-averia-gwf", "fonts-averia-sans-gwf", "fonts-averia-serif-gwf", "fonts-arkpandora", "fonts-okolaks",
    "fonts-beteckna",
    # monospace
    "fonts-inconsolata", "fonts-mononoki", "fonts-anonymous-pro",
    # handwriting
    "fonts-dancingscript", "fonts-breip", "fonts-femkeklaver", "fonts-dkg-handwriting", "fonts-isabella",
    "fonts-kristi", "fonts-humor-sans", "fonts-rufscript", "fonts-staypuft", "fonts-tomsontalks",
)
TEXT_TEST_FONT_PACKAGES = ("fonts-liberation", "fonts-go", "fonts-crosextra-carlito", "fonts-crosextra-caladea")
# dpkg's file lists; CTXDIFF_DPKG_INFO points elsewhere, e.g. at an empty folder to hide the system's fonts.
DPKG_INFO = Path(os.environ.get("CTXDIFF_DPKG_INFO", "/var/lib/dpkg/info"))
# A private-use code point in the last Unicode plane: no text font maps it, so it draws the font's ".notdef" glyph,
# which is also what the font draws for any character it lacks.
MISSING_CODEPOINT = "\U0010fffd"
# Family names that announce symbols rather than letters, including TeX's symbol fonts (cmsy: calligraphic capitals
# but symbols for lowercase and digits, which the glyph check below cannot tell from a fancy display font).
SYMBOL_NAME = re.compile(r"\b(dings?|dingbats?|wingdings|webdings|symbols?|opensymbol|ornaments?|emoji|icons?|"
                         r"awesome|marlett|cmsy\d*|cmex\d*|msam\d*|msbm\d*|wasy\d*)\b", re.IGNORECASE)
INSTALL_HINT = ("a clone of the repository carries them in data/fonts/ and data/fonts-text-test/ (`git checkout -- "
                "data/fonts data/fonts-text-test` restores them); elsewhere install the Debian packages that "
                "`python -m ctxdiff_from_scratch fonts --packages` lists with `sudo apt-get install` (Debian/Ubuntu/"
                "Colab), or pass your own fonts with GlyphWorld(fonts=PATH)")


def reference_font_path() -> Path:
    """DejaVu Sans as shipped inside matplotlib: the font of every query glyph."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def dpkg_lists(packages: tuple[str, ...], dpkg_info: Path | None = None) -> list[Path]:
    """dpkg's file lists of the installed ``packages`` (names or shell patterns such as "fonts-adf-*"), sorted."""
    dpkg_info = dpkg_info or DPKG_INFO
    # "<package>.list", or "<package>:<arch>.list" on multi-arch systems
    return sorted({p for pattern in packages for name in (f"{pattern}.list", f"{pattern}:*.list")
                   for p in dpkg_info.glob(name)})


def package_fonts(listing: Path) -> list[Path]:
    """The font files named in one dpkg file list (``<package>.list``) that exist, sorted by path."""
    paths = (Path(line.strip()) for line in listing.read_text().splitlines())
    return sorted(p for p in paths if p.suffix.lower() in FONT_SUFFIXES and p.is_file())


def debian_fonts(packages: tuple[str, ...], dpkg_info: Path | None = None) -> list[Path]:
    """The font files installed by ``packages``, sorted by path; FileNotFoundError when none is installed."""
    files = sorted({p for listing in dpkg_lists(packages, dpkg_info) for p in package_fonts(listing)})
    if not files:
        raise FileNotFoundError(f"none of the Debian font packages {', '.join(packages)} is installed: "
                                f"{INSTALL_HINT}.")
    return files


def _bundled_or_installed(bundle: Path, packages: tuple[str, ...]) -> list[Path]:
    from .font_bundle import MANIFEST, bundled_font_files

    if (bundle / MANIFEST).is_file():
        return bundled_font_files(bundle)
    return debian_fonts(packages)


def training_fonts() -> list[Path]:
    """GlyphWorld's training fonts: the bundled copy in ``data/fonts/`` if present, else the installed packages.

    Both hold the same files in the same order (a test checks it where the packages are installed).
    """
    from .font_bundle import BUNDLED_FONTS

    return _bundled_or_installed(BUNDLED_FONTS, TRAINING_FONT_PACKAGES)


def text_test_fonts() -> list[Path]:
    """The text fonts of the ``test-text`` split, never trained on: ``data/fonts-text-test/``, else installed."""
    from .font_bundle import BUNDLED_TEXT_TEST_FONTS

    return _bundled_or_installed(BUNDLED_TEXT_TEST_FONTS, TEXT_TEST_FONT_PACKAGES)


def font_files(path: str | Path) -> list[Path]:
    """A font file, or every font file under a folder (recursively), sorted by path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no font file or folder at {path}.")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FONT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no font files ({', '.join(FONT_SUFFIXES)}) under {path}.")
    return files


def family_key(family_name: str) -> str:
    """The first word of a font's family name, lowercased: 'Gillius ADF No2' and 'Gillius ADF' -> 'gillius'.

    Grouping by the first word keeps the variants of one design (weights, outlines, 'No2' cuts) on one side of the
    train/test split, so the test split measures fonts whose design was never seen.
    """
    words = re.findall(r"[0-9a-z]+", family_name.lower())
    return words[0] if words else family_name.lower()


def font_family(path: str | Path) -> str:
    """The :func:`family_key` of a font file (of its file name when FreeType cannot read it)."""
    try:
        family = ImageFont.truetype(str(path), 12).getname()[0]
    except OSError:
        family = None
    return family_key(family or Path(path).stem)


def split_families(keys: set[str] | list[str], test_fraction: float = TEST_FAMILY_FRACTION) -> set[str]:
    """The family keys held out for testing: the first ``round(fraction * n)`` (at least 1) in SHA-256 order.

    Hashing makes the choice deterministic and independent of file order or of the machine.
    """
    ordered = sorted(set(keys), key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    n_test = max(1, round(test_fraction * len(ordered))) if len(ordered) > 1 else 0
    return set(ordered[:n_test])


def held_out_families(paths: list[Path], families: list[str], test_fraction: float = TEST_FAMILY_FRACTION
                      ) -> set[str]:
    """:func:`split_families` within each folder, so every kind of font is tested (Debian installs the ADF book
    faces and the aenigma display faces into folders of their own). A family belongs to the folder of its first file.
    Folders with fewer than ``1 / test_fraction`` families (most text-font packages have one folder each, with one or
    two families) are split as one pool: one by one they would hold out none, or half of their families.
    """
    folder_of: dict[str, Path] = {}
    for path, family in sorted(zip(paths, families)):
        folder_of.setdefault(family, path.parent)
    members: dict[Path, list[str]] = {}
    for family, folder in folder_of.items():
        members.setdefault(folder, []).append(family)
    pooled = [f for group in members.values() if len(group) < 1 / test_fraction for f in group]
    groups = [group for group in members.values() if len(group) >= 1 / test_fraction] + [pooled]
    held_out: set[str] = set()
    for group in groups:
        held_out |= split_families(group, test_fraction) if group else set()
    return held_out


def render_charset(path: str | Path, charset: str = DEFAULT_CHARSET, size: int = 64, fill: float = GLYPH_FILL
                   ) -> np.ndarray:
    """Draw ``charset`` and then the .notdef glyph in one font -> uint8 (len(charset) + 1, size, size), 255 = paper.

    Scaling and placement are described in the module docstring. Raises OSError for a file FreeType cannot read.
    """
    probe = ImageFont.truetype(str(path), size)
    boxes = np.array([probe.getbbox(c, anchor="ls") for c in charset], dtype=np.float64)  # (C, 4): l, t, r, b
    extent = max(boxes[:, 3].max() - boxes[:, 1].min(), (boxes[:, 2] - boxes[:, 0]).max())
    if extent <= 0:
        return np.full((len(charset) + 1, size, size), 255, dtype=np.uint8)  # draws nothing at all
    font = ImageFont.truetype(str(path), max(1, round(size * fill * size / extent)))
    boxes = np.array([font.getbbox(c, anchor="ls") for c in charset + MISSING_CODEPOINT], dtype=np.float64)
    top, bottom = boxes[:-1, 1].min(), boxes[:-1, 3].max()
    baseline = (size - (bottom - top)) / 2 - top  # centres the font's extent [top, bottom] vertically
    glyphs = np.empty((len(charset) + 1, size, size), dtype=np.uint8)
    for i, char in enumerate(charset + MISSING_CODEPOINT):
        canvas = Image.new("L", (size, size), 255)
        x = size / 2 - (boxes[i, 0] + boxes[i, 2]) / 2  # centres this glyph's box horizontally
        ImageDraw.Draw(canvas).text((x, baseline), char, font=font, fill=0, anchor="ls")
        glyphs[i] = np.asarray(canvas)
    return glyphs


def missing_glyphs(glyphs: np.ndarray) -> np.ndarray:
    """(C + 1, S, S) from :func:`render_charset` -> (C,) bool: blank, or drawn as the .notdef glyph."""
    drawn, notdef = glyphs[:-1], glyphs[-1]
    blank = ~(drawn < 128).any(axis=(1, 2))
    return blank | (drawn == notdef).all(axis=(1, 2))


def shape_features(glyphs: np.ndarray, grid: int = 16) -> np.ndarray:
    """(C, S, S) uint8 glyphs -> (C, grid*grid) unit vectors describing each glyph's shape, whatever its size.

    Each glyph's ink box is stretched to a (2*grid)^2 square (nearest neighbour), blurred (so that small offsets and
    stroke details weigh little), averaged down to grid^2 and centred; cosine similarity compares two glyphs.
    """
    ink = glyphs < 128  # (C, S, S)
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (C, S) each: which rows / columns hold ink
    size = glyphs.shape[-1]
    first_row, last_row = rows.argmax(axis=1), size - 1 - rows[:, ::-1].argmax(axis=1)  # (C,)
    first_col, last_col = cols.argmax(axis=1), size - 1 - cols[:, ::-1].argmax(axis=1)
    steps = np.linspace(0.0, 1.0, 2 * grid)  # (2g,)
    r = np.round(first_row[:, None] + steps * (last_row - first_row)[:, None]).astype(int)  # (C, 2g)
    c = np.round(first_col[:, None] + steps * (last_col - first_col)[:, None]).astype(int)  # (C, 2g)
    index = np.arange(len(glyphs))[:, None, None]
    boxes = 1.0 - glyphs[index, r[:, :, None], c[:, None, :]] / 255.0  # (C, 2g, 2g), ink = 1
    boxes = gaussian_blur(boxes, sigma=2.0)
    pooled = boxes.reshape(len(glyphs), grid, 2, grid, 2).mean(axis=(2, 4))  # (C, 2g, 2g) -> (C, g, g)
    pooled = pooled.reshape(len(glyphs), -1)  # (C, g, g) -> (C, g*g)
    pooled -= pooled.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.where(rows.any(axis=1)[:, None], pooled / np.maximum(norms, 1e-9), 0.0)  # blank glyphs: zeros


def _dilate(ink: np.ndarray, steps: int) -> np.ndarray:
    """Grow the ink of (C, S, S) bool masks by ``steps`` pixels (4-neighbourhood)."""
    for _ in range(steps):
        p = np.pad(ink, ((0, 0), (1, 1), (1, 1)))  # (C, S, S) -> (C, S + 2, S + 2)
        ink = p[:, 1:-1, 1:-1] | p[:, :-2, 1:-1] | p[:, 2:, 1:-1] | p[:, 1:-1, :-2] | p[:, 1:-1, 2:]
    return ink


def reference_features(reference: np.ndarray) -> list[np.ndarray]:
    """Shape features of the reference glyphs (C, S, S) as drawn, in bold, and in outline.

    Display fonts are often heavy or hollow; reading them against a bold and an outlined reference as well as the
    plain one keeps such letter fonts apart from true symbol fonts.
    """
    ink = reference < 128
    step = max(1, round(3 * reference.shape[-1] / 64))  # 3 px at 64 px
    bold = _dilate(ink, step)
    outline = bold & ~_dilate(ink, step // 3)
    variants = [reference] + [np.where(mask, 0, 255).astype(np.uint8) for mask in (bold, outline)]
    return [shape_features(v) for v in variants]


def recognised_fraction(features: np.ndarray, references: list[np.ndarray], top: int = 5) -> float:
    """Share of a font's glyphs whose own character is among the ``top`` most similar reference glyphs.

    A nearest-neighbour reader with one example per character (the reference font, in each variant of
    :func:`reference_features`; a glyph's similarity to a character is its best over the variants): text fonts
    score 0.5-1, dingbats and symbol fonts near chance (top / C).
    """
    # (C, D), (C, D) -> (C, C): font glyph i vs reference glyph j. einsum rather than @: a matrix this small is
    # faster in one thread than through a multithreaded BLAS, which stalls when other processes hold the cores.
    similarity = np.max([np.einsum("id,jd->ij", features, ref) for ref in references], axis=0)
    rank = (similarity > np.diag(similarity)[:, None]).sum(axis=1)  # reference glyphs beating the right one
    return float((rank < top).mean())


@dataclass
class FontSurvey:
    """The fonts that passed the checks, and why the others did not."""

    paths: list[Path]
    names: list[str]  # "Family Style", as the font names itself
    families: list[str]  # family_key of each kept font
    glyphs: np.ndarray  # (F, C, S, S) uint8, 255 = paper
    dropped: dict[str, list[str]]  # reason -> "file: detail" lines
    found: int  # font files looked at

    def summary(self) -> str:
        reasons = ", ".join(f"{len(v)} {k}" for k, v in self.dropped.items() if v) or "none"
        return (f"{self.found} font files, {len(self.paths)} kept in {len(set(self.families))} families; "
                f"dropped: {reasons}")


def survey_fonts(paths: list[Path], charset: str, size: int, reference: np.ndarray, progress: bool = True
                 ) -> FontSurvey:
    """Render every font and drop the unusable ones, each under one reason (checked in this order):

    unreadable -- FreeType cannot open the file;
    missing glyphs -- a charset character draws nothing, or draws the .notdef box;
    symbols -- the family name says so (:data:`SYMBOL_NAME`), or fewer than ``MIN_RECOGNISED`` of its glyphs are
        recognised from the reference font (dingbats, pictures, and display fonts no reader would recognise);
    duplicate -- every glyph is pixel-identical to a font kept earlier, or to the reference font (a target that is
        the query is no task).
    ``reference``: the reference font's (C + 1, S, S) rendering.
    """
    from tqdm.auto import tqdm

    reasons = ("unreadable", "missing glyphs", "symbols", "duplicate")
    dropped: dict[str, list[str]] = {reason: [] for reason in reasons}
    references = reference_features(reference[:-1])
    seen = {hashlib.sha256(reference[:-1].tobytes()).hexdigest(): "the reference font"}
    kept_paths, names, families, glyph_sets = [], [], [], []
    for path in tqdm(paths, desc="rendering fonts", disable=not progress):
        try:
            family, style = ImageFont.truetype(str(path), size).getname()
            glyphs = render_charset(path, charset, size)
        except OSError as error:
            dropped["unreadable"].append(f"{path.name}: {error}")
            continue
        missing = missing_glyphs(glyphs)
        if missing.any():
            lacking = "".join(c for c, m in zip(charset, missing) if m)
            dropped["missing glyphs"].append(f"{path.name}: lacks {lacking[:20]}{'...' if len(lacking) > 20 else ''}")
            continue
        score = recognised_fraction(shape_features(glyphs[:-1]), references)
        if SYMBOL_NAME.search(family or "") or score < MIN_RECOGNISED:
            dropped["symbols"].append(f"{path.name}: {family!r}, {score:.0%} of glyphs recognised")
            continue
        digest = hashlib.sha256(glyphs[:-1].tobytes()).hexdigest()
        if digest in seen:
            dropped["duplicate"].append(f"{path.name}: same glyphs as {seen[digest]}")
            continue
        seen[digest] = path.name
        kept_paths.append(path)
        names.append(f"{family} {style}".strip())
        families.append(family_key(family or path.stem))
        glyph_sets.append(glyphs[:-1])
    glyphs = np.stack(glyph_sets) if glyph_sets else np.zeros((0, len(charset), size, size), dtype=np.uint8)
    return FontSurvey(kept_paths, names, families, glyphs, dropped, found=len(paths))

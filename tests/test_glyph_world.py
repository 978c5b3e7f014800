"""GlyphWorld: font filtering, rendering conventions, episodes, and the Debian train/test font split.

Most tests use the fonts that ship with matplotlib; the split test uses the Debian training fonts bundled in
data/fonts/ (no apt needed; tests/test_font_bundle.py checks the bundle against an apt install).
"""
import fnmatch
import shutil
import time
from pathlib import Path

import matplotlib
import pytest
import torch

from ctxdiff_from_scratch.data import GlyphWorld, font_bundle, fonts
from ctxdiff_from_scratch.data.fonts import (DEFAULT_CHARSET, font_family, held_out_families, split_families,
                                             training_fonts)

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@pytest.fixture(scope="module")
def world():
    return GlyphWorld(fonts=MPL_FONTS, size=32, progress=False)


def test_filters_report_why_each_font_was_dropped(world):
    dropped = {reason: [line.split(":")[0] for line in lines] for reason, lines in world.dropped.items()}
    # STIX's size variants and the Display cuts hold no Latin letters
    assert "STIXSizOneSymReg.ttf" in dropped["missing glyphs"] and "DejaVuSansDisplay.ttf" in dropped["missing glyphs"]
    assert "LastResortHE-Regular.ttf" in dropped["symbols"]  # one "Basic Latin" box for every letter
    # TeX's symbol font: named as such; at small sizes some of its tiny symbols already draw no ink
    assert "cmsy10.ttf" in dropped["symbols"] + dropped["missing glyphs"]
    assert "DejaVuSans.ttf" in dropped["duplicate"], "the reference font itself is no target font"
    names = {p.name for p in world.font_paths}
    assert {"DejaVuSerif.ttf", "cmr10.ttf", "STIXGeneral.ttf", "DejaVuSansMono.ttf"} <= names
    assert names.isdisjoint(n for lines in dropped.values() for n in lines)
    found = len(fonts.font_files(MPL_FONTS))
    assert world.num_fonts + sum(len(v) for v in world.dropped.values()) == found
    assert f"{found} font files, {world.num_fonts} kept" in world.report
    assert len(world.font_names) == world.num_fonts == len(world.families)


def test_identical_copies_are_duplicates(tmp_path):
    for name in ("a.ttf", "b.ttf"):
        shutil.copy(MPL_FONTS / "DejaVuSerif.ttf", tmp_path / name)
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    small = GlyphWorld(fonts=tmp_path, size=24, charset="AbC1", progress=False)
    assert [p.name for p in small.font_paths] == ["a.ttf"]
    assert small.dropped["duplicate"][0].startswith("b.ttf") and small.dropped["unreadable"][0].startswith("broken")


def test_glyphs_are_dark_on_white_centred_and_inside_the_canvas(world):
    glyphs = torch.stack([world.render(f, c) for f in range(world.num_fonts) for c in world.charset])
    assert glyphs.shape == (world.num_fonts * 62, 3, 32, 32)
    assert glyphs.min() >= 0 and glyphs.max() <= 1
    assert torch.equal(glyphs[:, 0], glyphs[:, 1]) and torch.equal(glyphs[:, 0], glyphs[:, 2])  # grey
    ink = glyphs[:, 0] < 0.5  # (N, S, S)
    assert ink.flatten(1).any(dim=1).all(), "every glyph has ink"
    assert not ink[:, [0, -1], :].any() and not ink[:, :, [0, -1]].any(), "no glyph touches the canvas border"
    cols = torch.arange(32.0)
    centre = (ink.float().sum(dim=1) * cols).sum(dim=1) / ink.float().sum(dim=(1, 2))  # ink centre of mass, x
    assert (centre - 15.5).abs().median() < 2, "glyphs are centred horizontally"
    # one baseline per font: 'H', 'E' and 'x' end on the same row
    for f in range(world.num_fonts):
        bottoms = [int(torch.nonzero(world.render(f, c)[0] < 0.5)[:, 0].max()) for c in "HEx"]
        assert max(bottoms) - min(bottoms) <= 1, world.font_names[f]


def find_char(world, image, font=None):
    """The character whose rendering equals ``image`` (in ``font``, or in the reference font when None)."""
    for char in world.charset:
        candidate = world.render_reference(char) if font is None else world.render(font, char)
        if torch.equal(candidate, image):
            return char
    return None


def test_episode_query_context_target_are_consistent(world):
    for seed in range(5):
        ep = world.episode(seed, k=4)
        assert ep.task == "font2font" and ep.prompt == "" and ep.context.shape == (4, 3, 32, 32)
        query_char = find_char(world, ep.query)
        fonts_with_target = [f for f in range(world.num_fonts) if torch.equal(world.render(f, query_char), ep.target)]
        assert fonts_with_target, "the target is the query character in some world font"
        font = fonts_with_target[0]
        context_chars = [find_char(world, image, font) for image in ep.context]
        assert None not in context_chars and query_char not in context_chars
        assert len(set(context_chars)) == 4


def test_episodes_are_deterministic_and_nested_in_k(world):
    a, b = world.episode(7, k=3), world.episode(7, task="font2font", k=3)
    assert torch.equal(a.query, b.query) and torch.equal(a.context, b.context) and torch.equal(a.target, b.target)
    longer = world.episode(7, k=6)
    assert torch.equal(longer.context[:3], a.context) and torch.equal(longer.target, a.target)
    assert world.episode(7, k=0).k == 0
    targets = {world.episode(s).target.numpy().tobytes() for s in range(20)}
    assert len(targets) > 10, "different seeds give different episodes"


def test_bad_arguments_are_explained(world, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="tasks"):
        world.episode(0, task="edge2img")
    with pytest.raises(ValueError, match="k must be"):
        world.episode(0, k=62)
    with pytest.raises(ValueError, match="charset"):
        world.render(0, "%")
    with pytest.raises(ValueError, match="split"):
        GlyphWorld(split="valid", fonts=MPL_FONTS)
    with pytest.raises(FileNotFoundError, match="no font files"):
        GlyphWorld(fonts=tmp_path)
    monkeypatch.setattr(fonts, "DPKG_INFO", tmp_path)  # a machine without the Debian packages ...
    monkeypatch.setattr(font_bundle, "BUNDLED_FONTS", tmp_path)  # ... and a wheel install without data/fonts
    with pytest.raises(FileNotFoundError, match="fonts --packages"):
        GlyphWorld(split="train")


def test_family_split_is_deterministic_and_disjoint():
    keys = [f"family{i}" for i in range(50)]
    held_out = split_families(keys)
    assert len(held_out) == 5 and held_out == split_families(list(reversed(keys)))
    assert font_family(MPL_FONTS / "DejaVuSerif-Bold.ttf") == font_family(MPL_FONTS / "DejaVuSerif.ttf") == "dejavu"
    train = GlyphWorld(split="train", fonts=MPL_FONTS, size=16, charset="Ab1", progress=False)
    test = GlyphWorld(split="test", fonts=MPL_FONTS, size=16, charset="Ab1", progress=False)
    assert set(train.families).isdisjoint(test.families) and test.num_fonts > 0


def test_episodes_are_fast(world):
    start = time.perf_counter()
    for seed in range(300):
        world.episode(seed, k=3)
    rate = 300 / (time.perf_counter() - start)
    assert rate > 300, f"only {rate:.0f} episodes/s at k=3: episodes must not bottleneck training"


def test_debian_split_uses_only_debian_fonts_and_disjoint_families():
    debian = set(training_fonts())
    listed = {font_bundle.BUNDLED_FONTS / font.path for font in font_bundle.read_manifest()}
    packages = {font.package for font in font_bundle.read_manifest()}
    assert debian == listed, "training fonts are the bundle's files, all of them"
    assert "fonts-aenigma" in packages
    assert all(any(fnmatch.fnmatch(p, pattern) for pattern in fonts.TRAINING_FONT_PACKAGES) for p in packages)
    families = {p: font_family(p) for p in debian}
    held_out = held_out_families(list(families), list(families.values()))
    assert abs(len(held_out) - 0.1 * len(set(families.values()))) <= 3
    test_packages = {f.package for f in font_bundle.read_manifest() if families[font_bundle.BUNDLED_FONTS / f.path]
                     in held_out}
    assert {"fonts-aenigma"} < test_packages and any(p.startswith("fonts-adf-") for p in test_packages)
    assert len(test_packages) >= 4, "display (aenigma), book (adf) and text faces are all tested"
    # small images and a short charset keep this fast; which fonts may be used does not depend on them
    train = GlyphWorld(split="train", size=16, charset="Ag5", progress=False)
    test = GlyphWorld(split="test", size=16, charset="Ag5", progress=False)
    for world in (train, test):
        assert set(world.font_paths) <= debian, "no font outside the Debian packages, not even the reference"
        assert not any("matplotlib" in str(p) for p in world.font_paths)
    assert {families[p] for p in test.font_paths} <= held_out
    assert {families[p] for p in train.font_paths}.isdisjoint(held_out)
    assert set(train.families).isdisjoint(test.families) and train.num_fonts > 8 * test.num_fonts
    assert train.episode(0, k=2).target.shape == (3, 16, 16) and len(DEFAULT_CHARSET) == 62

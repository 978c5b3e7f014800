"""The bundled fonts (data/fonts/: training; data/fonts-text-test/: the text-font test split): complete, licensed,
identical to Debian's packages, and enough on their own: GlyphWorld needs no apt and no system font.
"""
import shutil
from pathlib import Path

import matplotlib
import pytest

from ctxdiff_from_scratch.__main__ import main as cli
from ctxdiff_from_scratch.data import GlyphWorld, font_bundle, fonts
from ctxdiff_from_scratch.data.font_bundle import (BUNDLED_FONTS, BUNDLED_TEXT_TEST_FONTS, build_bundle, bundles,
                                                   read_manifest, sha256_of)

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@pytest.mark.parametrize("bundle", [BUNDLED_FONTS, BUNDLED_TEXT_TEST_FONTS], ids=["training", "text-test"])
def test_every_bundled_file_matches_the_manifest_and_has_its_licence(bundle):
    manifest = read_manifest(bundle)
    assert len(manifest) > 30 and [f.path for f in manifest] == sorted(f.path for f in manifest)
    for font in manifest:
        assert sha256_of(bundle / font.path) == font.sha256, font.path
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.suffix.lower() in fonts.FONT_SUFFIXES}
    assert on_disk == {f.path for f in manifest}, "no unlisted font file in the bundle"
    readme = (bundle / "README.md").read_text()
    for package in {f.package for f in manifest}:
        terms = (bundle / "licences" / f"{package}.copyright").read_text()
        assert "Licen" in terms and f"`licences/{package}.copyright`" in readme
        for cited in font_bundle.COMMON_LICENCES.findall(terms):
            assert (bundle / "licences" / cited).is_file(), f"{package} cites {cited}: its text must be there"


def test_the_text_test_packages_are_never_training_packages():
    training = {f.package for f in read_manifest(BUNDLED_FONTS)}
    text_test = {f.package for f in read_manifest(BUNDLED_TEXT_TEST_FONTS)}
    assert training.isdisjoint(text_test) and len(training) > 40 and len(text_test) == 4
    families = {bundle: {fonts.font_family(bundle / f.path) for f in read_manifest(bundle)}
                for bundle in (BUNDLED_FONTS, BUNDLED_TEXT_TEST_FONTS)}
    assert families[BUNDLED_FONTS].isdisjoint(families[BUNDLED_TEXT_TEST_FONTS]), "no text-test design in training"


def test_glyph_world_uses_the_bundle_with_the_system_fonts_hidden(tmp_path, monkeypatch):
    monkeypatch.setattr(fonts, "DPKG_INFO", tmp_path)  # as on a machine where apt installed nothing
    world = GlyphWorld(split="test", size=16, charset="Ag5", progress=False)
    assert world.num_fonts > 20 and all(BUNDLED_FONTS in p.parents for p in world.font_paths)
    text = GlyphWorld(split="test-text", size=16, charset="Ag5", progress=False)
    assert text.num_fonts == 36 and all(BUNDLED_TEXT_TEST_FONTS in p.parents for p in text.font_paths)


def test_a_truncated_bundle_is_an_error(tmp_path):
    bundle = tmp_path / "fonts"
    shutil.copytree(BUNDLED_FONTS / "licences", bundle / "licences")
    shutil.copy(BUNDLED_FONTS / font_bundle.MANIFEST, bundle)
    first = read_manifest()[0]
    (bundle / first.path).parent.mkdir(parents=True)
    (bundle / first.path).write_bytes(b"version https://git-lfs.github.com/spec/v1")  # a pointer, not the font
    with pytest.raises(FileNotFoundError, match="missing or truncated"):
        font_bundle.bundled_font_files(bundle)


def fake_debian(root: Path) -> Path:
    """A fake Debian system under ``root`` with two font packages (matplotlib's fonts as their files); -> info/."""
    info, share = root / "var/lib/dpkg/info", root / "usr/share"
    info.mkdir(parents=True)
    packages = {"fonts-aenigma": ["DejaVuSerif.ttf", "cmr10.ttf"], "fonts-adf-gillius": ["DejaVuSansMono.ttf"]}
    status = []
    for package, names in packages.items():
        folder = share / "fonts/truetype" / package.split("-")[1]
        folder.mkdir(parents=True)
        for name in names:
            shutil.copy(MPL_FONTS / name, folder / name)
        (info / f"{package}.list").write_text("\n".join([str(folder)] + [str(folder / n) for n in names]) + "\n")
        (share / "doc" / package).mkdir(parents=True)
        (share / "doc" / package / "copyright").write_text(
            "Files: *\nLicense: GPL-2+\n See /usr/share/common-licenses/GPL-2.\n")
        status.append(f"Package: {package}\nStatus: install ok installed\nVersion: 1.{len(names)}-1\n")
    (share / "common-licenses").mkdir()
    (share / "common-licenses" / "GPL-2").write_text("GNU GENERAL PUBLIC LICENSE, Version 2\n")
    (root / "var/lib/dpkg/status").write_text("\n".join(status))
    return info


def test_build_bundle_copies_the_packages_fonts_licences_and_versions(tmp_path):
    info = fake_debian(tmp_path / "debian")
    share = tmp_path / "debian/usr/share"
    dest = tmp_path / "bundle"
    entries = build_bundle(dest, ("fonts-aenigma", "fonts-adf-*"), "training fonts", info, font_root=share / "fonts",
                           docs=share / "doc", common_licences=share / "common-licenses")
    assert [(f.package, f.version, f.path) for f in entries] == [
        ("fonts-adf-gillius", "1.1-1", "truetype/adf/DejaVuSansMono.ttf"),
        ("fonts-aenigma", "1.2-1", "truetype/aenigma/DejaVuSerif.ttf"),
        ("fonts-aenigma", "1.2-1", "truetype/aenigma/cmr10.ttf")]
    assert read_manifest(dest) == entries
    assert font_bundle.bundled_font_files(dest) == [dest / f.path for f in entries]
    assert (dest / "licences/GPL-2").read_text().startswith("GNU GENERAL")
    readme = (dest / "README.md").read_text()
    assert readme.startswith("# GlyphWorld's training fonts") and "| `fonts-aenigma` | 1.2-1 | 2 | GPL-2+:" in readme
    # the bundle gives the same world as the "installed" packages: same files, same order, same glyphs
    bundled, installed = (GlyphWorld(fonts=folder, size=16, charset="Ag5", progress=False)
                          for folder in (dest / "truetype", share / "fonts/truetype"))
    assert [p.name for p in bundled.font_paths] == [p.name for p in installed.font_paths]
    assert (bundled._glyphs == installed._glyphs).all()


def test_fonts_command_checks_both_bundles_and_lists_their_packages(capsys):
    cli(["fonts"])
    out = capsys.readouterr().out
    for folder in (BUNDLED_FONTS, BUNDLED_TEXT_TEST_FONTS):
        assert f"{len(read_manifest(folder))} bundled font files in {folder}, all matching" in out
    cli(["fonts", "--packages"])
    listed = capsys.readouterr().out.split()
    assert listed == [*fonts.TRAINING_FONT_PACKAGES, *fonts.TEXT_TEST_FONT_PACKAGES] and "fonts-adf-*" in listed


def installed_fonts(packages: tuple[str, ...]) -> list[Path]:
    try:
        return fonts.debian_fonts(packages, Path("/var/lib/dpkg/info"))
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("purpose", list(bundles()))
def test_bundle_is_identical_to_the_installed_debian_packages(purpose):
    folder, packages = bundles()[purpose]
    installed = installed_fonts(packages)
    if not installed:
        pytest.skip(f"compares the {purpose} bundle with an apt install of its packages (CI installs them: "
                    "`apt-get install $(python -m ctxdiff_from_scratch fonts --packages)`)")
    manifest = read_manifest(folder)
    assert [p.relative_to(font_bundle.DEBIAN_FONT_ROOT).as_posix() for p in installed] == [f.path for f in manifest]
    assert [sha256_of(p) for p in installed] == [f.sha256 for f in manifest]
    versions = font_bundle.installed_versions(Path("/var/lib/dpkg/info"))
    assert {f.package: f.version for f in manifest} == {p: versions[p] for p in {f.package for f in manifest}}

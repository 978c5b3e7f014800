"""The bundled training fonts (data/fonts/): complete, licensed, identical to Debian's packages, and enough on their
own: GlyphWorld needs no apt and no system font.
"""
import shutil
from pathlib import Path

import matplotlib
import pytest

from ctxdiff_from_scratch.__main__ import main as cli
from ctxdiff_from_scratch.data import GlyphWorld, font_bundle, fonts
from ctxdiff_from_scratch.data.font_bundle import BUNDLED_FONTS, build_bundle, read_manifest, sha256_of

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def test_every_bundled_file_matches_the_manifest_and_has_its_licence():
    manifest = read_manifest()
    assert len(manifest) > 500 and [f.path for f in manifest] == sorted(f.path for f in manifest)
    for font in manifest:
        assert sha256_of(BUNDLED_FONTS / font.path) == font.sha256, font.path
    on_disk = {p.relative_to(BUNDLED_FONTS).as_posix() for p in BUNDLED_FONTS.rglob("*")
               if p.suffix.lower() in fonts.FONT_SUFFIXES}
    assert on_disk == {f.path for f in manifest}, "no unlisted font file in the bundle"
    readme = (BUNDLED_FONTS / "README.md").read_text()
    for package in {f.package for f in manifest}:
        terms = (BUNDLED_FONTS / "licences" / f"{package}.copyright").read_text()
        assert "License:" in terms and f"`licences/{package}.copyright`" in readme
        for cited in font_bundle.COMMON_LICENCES.findall(terms):
            assert (BUNDLED_FONTS / "licences" / cited).is_file(), f"{package} cites {cited}: its text must be there"


def test_glyph_world_uses_the_bundle_with_the_system_fonts_hidden(tmp_path, monkeypatch):
    monkeypatch.setattr(fonts, "DPKG_INFO", tmp_path)  # as on a machine where apt installed nothing
    world = GlyphWorld(split="test", size=16, charset="Ag5", progress=False)
    assert world.num_fonts > 20 and all(BUNDLED_FONTS in p.parents for p in world.font_paths)


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
    entries = build_bundle(dest, info, font_root=share / "fonts", docs=share / "doc",
                           common_licences=share / "common-licenses")
    assert [(f.package, f.version, f.path) for f in entries] == [
        ("fonts-adf-gillius", "1.1-1", "truetype/adf/DejaVuSansMono.ttf"),
        ("fonts-aenigma", "1.2-1", "truetype/aenigma/DejaVuSerif.ttf"),
        ("fonts-aenigma", "1.2-1", "truetype/aenigma/cmr10.ttf")]
    assert read_manifest(dest) == entries
    assert font_bundle.bundled_font_files(dest) == [dest / f.path for f in entries]
    assert (dest / "licences/GPL-2").read_text().startswith("GNU GENERAL")
    assert "| `fonts-aenigma` | 1.2-1 | 2 | GPL-2+:" in (dest / "README.md").read_text()
    # the bundle gives the same world as the "installed" packages: same files, same order, same glyphs
    bundled, installed = (GlyphWorld(fonts=folder, size=16, charset="Ag5", progress=False)
                          for folder in (dest / "truetype", share / "fonts/truetype"))
    assert [p.name for p in bundled.font_paths] == [p.name for p in installed.font_paths]
    assert (bundled._glyphs == installed._glyphs).all()


def test_fonts_command_checks_the_bundle(capsys):
    cli(["fonts"])
    assert f"{len(read_manifest())} bundled font files" in capsys.readouterr().out


def installed_packages():
    try:
        return fonts.debian_training_fonts(Path("/var/lib/dpkg/info"))
    except FileNotFoundError:
        return []


@pytest.mark.skipif(not installed_packages(), reason="compares the bundle with an apt install of fonts-aenigma and "
                    "fonts-adf-* (CI installs them for this test)")
def test_bundle_is_identical_to_the_installed_debian_packages():
    installed = installed_packages()
    manifest = read_manifest()
    assert [p.relative_to(font_bundle.DEBIAN_FONT_ROOT).as_posix() for p in installed] == [f.path for f in manifest]
    assert [sha256_of(p) for p in installed] == [f.sha256 for f in manifest]
    versions = font_bundle.installed_versions(Path("/var/lib/dpkg/info"))
    assert {f.package: f.version for f in manifest} == {p: versions[p] for p in {f.package for f in manifest}}

"""The bundled copies of GlyphWorld's fonts: Debian's font files, shipped in ``data/`` with their licences.

GlyphWorld trains on the fonts of the Debian packages in ``fonts.TRAINING_FONT_PACKAGES`` and keeps a second test
split of text fonts from ``fonts.TEXT_TEST_FONT_PACKAGES``. Installing those needs root (apt), so the repository
carries a copy of exactly those files, at pinned package versions, in two bundles -- ``data/fonts/`` (training, and
its held-out ``test`` families) and ``data/fonts-text-test/`` -- so that a fresh clone on any machine (no root, no
Debian, Colab) sees the same fonts, the same splits and therefore the same episodes that the shipped glyph model was
trained and measured on.

Layout of a bundle::

    README.md                    what the bundle is, its packages and their licences
    MANIFEST.tsv                 package, version, path, bytes, sha256: one line per font file
    licences/<package>.copyright  the package's Debian copyright file (licence terms)
    licences/GPL-2 ...           the full licence texts those files cite from /usr/share/common-licenses/
    truetype/adf/*.otf ...       the font files, at their paths under /usr/share/fonts/

Keeping Debian's folder layout keeps the file order and the folders that :func:`fonts.held_out_families` splits
within, so a bundle and an apt install give identical worlds. ``python -m ctxdiff_from_scratch fonts --bundle``
(maintainers only) rebuilds both bundles from the installed packages.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

BUNDLED_FONTS = Path(__file__).resolve().parents[2] / "data" / "fonts"
BUNDLED_TEXT_TEST_FONTS = BUNDLED_FONTS.parent / "fonts-text-test"
MANIFEST = "MANIFEST.tsv"
MANIFEST_HEADER = ("package", "version", "path", "bytes", "sha256")
DEBIAN_FONT_ROOT = Path("/usr/share/fonts")  # bundle paths are relative to it
DEBIAN_DOCS = Path("/usr/share/doc")  # <package>/copyright
COMMON_LICENCE_DIR = Path("/usr/share/common-licenses")
COMMON_LICENCES = re.compile(r"/usr/share/common-licenses/([\w+-]+(?:\.[\w+-]+)*)")  # full texts a copyright file cites


@dataclass(frozen=True)
class BundledFont:
    """One manifest line: a font file of a Debian package, by its path relative to the bundle."""

    package: str
    version: str
    path: str
    size: int
    sha256: str


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(bundle: Path = BUNDLED_FONTS) -> list[BundledFont]:
    """The manifest's font lines, sorted by path. FileNotFoundError when the bundle has no manifest."""
    lines = (bundle / MANIFEST).read_text().splitlines()
    if tuple(lines[0].split("\t")) != MANIFEST_HEADER:
        raise ValueError(f"{bundle / MANIFEST} must start with the header {MANIFEST_HEADER}, got {lines[0]!r}.")
    fonts = []
    for line in lines[1:]:
        package, version, path, size, digest = line.split("\t")
        fonts.append(BundledFont(package, version, path, int(size), digest))
    return sorted(fonts, key=lambda font: font.path)


def bundled_font_files(bundle: Path = BUNDLED_FONTS) -> list[Path]:
    """The bundle's font files in manifest (path) order, after checking that each is there at its recorded size.

    A file that is missing or of another size (an interrupted clone, a Git LFS pointer) is an error, not a silently
    smaller world: the train/test split and every episode depend on the whole set.
    """
    fonts = read_manifest(bundle)
    broken = [f.path for f in fonts if not (bundle / f.path).is_file() or (bundle / f.path).stat().st_size != f.size]
    if broken:
        raise FileNotFoundError(f"{len(broken)} of the {len(fonts)} bundled fonts in {bundle} are missing or "
                                f"truncated (first: {broken[0]}); restore them with `git checkout -- {bundle}`.")
    return [bundle / f.path for f in fonts]


def installed_versions(dpkg_info: Path) -> dict[str, str]:
    """Package -> installed version, from dpkg's status file (the ``status`` beside its ``info/`` folder)."""
    versions = {}
    for stanza in (dpkg_info.parent / "status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version): *(.+)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            versions[fields["Package"]] = fields["Version"]
    return versions


def build_bundle(dest: Path, packages: tuple[str, ...], purpose: str, dpkg_info: Path | None = None,
                 font_root: Path = DEBIAN_FONT_ROOT, docs: Path = DEBIAN_DOCS,
                 common_licences: Path = COMMON_LICENCE_DIR) -> list[BundledFont]:
    """Copy the installed font ``packages`` into ``dest`` (fonts, licences, manifest, README); return the manifest.

    ``purpose`` titles the README (e.g. "training fonts"). ``dest`` is emptied first, so the bundle holds exactly what
    the packages hold. The other folders are Debian's (dpkg's ``info/``, the fonts' root, package docs, full licence
    texts); tests point them at a fake system.
    """
    from .fonts import DPKG_INFO, dpkg_lists, package_fonts

    dpkg_info = dpkg_info or DPKG_INFO
    lists = dpkg_lists(packages, dpkg_info)
    if not lists:
        raise FileNotFoundError(f"none of the Debian packages {', '.join(packages)} is installed; install them with "
                                "`sudo apt-get install` first.")
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "licences").mkdir(parents=True)
    versions = installed_versions(dpkg_info)
    entries, cited, licence_of = [], set(), {}
    for listing in lists:
        package = listing.name.removesuffix(".list").split(":")[0]  # "<package>:<arch>.list" on multi-arch systems
        version = versions[package]
        copyright_text = (docs / package / "copyright").read_text()
        (dest / "licences" / f"{package}.copyright").write_text(copyright_text)
        cited |= set(COMMON_LICENCES.findall(copyright_text))
        # the fonts' own terms: the first "License:" field, which belongs to the "Files: *" paragraph (older,
        # free-form copyright files have none: their text says it)
        field = re.search(r"^License: *(\S+)", copyright_text, re.MULTILINE)
        licence_of[package] = field.group(1) if field else "free-form, see"
        for source in package_fonts(listing):
            relative = source.relative_to(font_root)
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / relative)
            entries.append(BundledFont(package, version, relative.as_posix(), source.stat().st_size,
                                       sha256_of(source)))
    for name in sorted(cited):
        shutil.copyfile(common_licences / name, dest / "licences" / name)
    entries.sort(key=lambda font: font.path)
    rows = ["\t".join(MANIFEST_HEADER)] + ["\t".join((f.package, f.version, f.path, str(f.size), f.sha256))
                                           for f in entries]
    (dest / MANIFEST).write_text("\n".join(rows) + "\n")
    (dest / "README.md").write_text(bundle_readme(entries, licence_of, sorted(cited), purpose))
    return entries


def bundle_readme(entries: list[BundledFont], licence_of: dict[str, str], full_texts: list[str], purpose: str
                  ) -> str:
    """The bundle's README: where the files come from and under which terms they are redistributed."""
    counts: dict[tuple[str, str], int] = {}
    for font in entries:
        counts[font.package, font.version] = counts.get((font.package, font.version), 0) + 1
    rows = "\n".join(f"| `{package}` | {version} | {n} | {licence_of[package]}: `licences/{package}.copyright` |"
                      for (package, version), n in sorted(counts.items()))
    return f"""# GlyphWorld's {purpose} (bundled)

Unmodified copies of the font files of these Debian packages, at the paths they install under `/usr/share/fonts/`,
so that GlyphWorld works on any machine without apt (see `ctxdiff_from_scratch/data/font_bundle.py`). Each package
is redistributed under its own licence, given in its Debian copyright file beside it; the full texts those files cite
are in `licences/` too ({", ".join(full_texts) or "none"}). These licences cover the fonts only; the rest of the
repository is under its own licence.

| package | version | font files | licence |
|---|---|---|---|
{rows}

`MANIFEST.tsv` lists every file with its size and SHA-256. `python -m ctxdiff_from_scratch fonts` checks the bundles;
`python -m ctxdiff_from_scratch fonts --bundle` rebuilds them from the installed packages (maintainers).
"""


def bundles() -> dict[str, tuple[Path, tuple[str, ...]]]:
    """purpose -> (bundle folder, Debian packages) of both bundles."""
    from .fonts import TEXT_TEST_FONT_PACKAGES, TRAINING_FONT_PACKAGES

    return {"training fonts": (BUNDLED_FONTS, TRAINING_FONT_PACKAGES),
            "text-font test split": (BUNDLED_TEXT_TEST_FONTS, TEXT_TEST_FONT_PACKAGES)}


def check_bundle(bundle: Path) -> str:
    """A one-line report on a bundle; SystemExit when a file differs from its manifest line."""
    files = bundled_font_files(bundle)
    corrupt = [f.path for f in read_manifest(bundle) if sha256_of(bundle / f.path) != f.sha256]
    if corrupt:
        raise SystemExit(f"{len(corrupt)} bundled fonts in {bundle} differ from the manifest (first: {corrupt[0]}).")
    return f"{len(files)} bundled font files in {bundle}, all matching the manifest."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch fonts",
                                     description="Check the bundled fonts (training; text-font test split), list "
                                                 "their Debian packages, or rebuild them from Debian's.")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--bundle", action="store_true",
                        help="rebuild both bundles from the installed Debian packages (maintainers)")
    action.add_argument("--packages", action="store_true",
                        help="print both bundles' Debian packages (or apt patterns), one per line, for apt-get")
    args = parser.parse_args(argv)
    if args.packages:
        print(*(package for _, packages in bundles().values() for package in packages), sep="\n")
        return
    for purpose, (folder, packages) in bundles().items():
        if args.bundle:
            entries = build_bundle(folder, packages, purpose)
            names = sorted({f"{f.package} {f.version}" for f in entries})
            print(f"bundled {len(entries)} font files of {len(names)} packages into {folder}:", *names,
                  sep="\n  ")
        else:
            print(check_bundle(folder))

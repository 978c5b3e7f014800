"""The bundled copy of GlyphWorld's training fonts: Debian's font files, shipped in ``data/fonts/`` with their licences.

GlyphWorld trains on the fonts of Debian's ``fonts-aenigma`` and ``fonts-adf-*`` packages. Installing those needs
root (apt), so the repository carries a copy of exactly those files, at pinned package versions, so that a fresh
clone on any machine (no root, no Debian, Colab) sees the same fonts, the same train/test family split and therefore
the same episodes that the shipped glyph model was trained and measured on.

Layout of the bundle (``data/fonts/``)::

    README.md                    what the bundle is, its packages and their licences
    MANIFEST.tsv                 package, version, path, bytes, sha256: one line per font file
    licences/<package>.copyright  the package's Debian copyright file (licence terms)
    licences/GPL-2 ...           the full licence texts those files cite from /usr/share/common-licenses/
    truetype/adf/*.otf ...       the font files, at their paths under /usr/share/fonts/

Keeping Debian's folder layout keeps the file order and the folders that :func:`fonts.held_out_families` splits
within, so the bundle and an apt install give identical worlds. ``python -m ctxdiff_from_scratch fonts --bundle``
(maintainers only) rebuilds the bundle from the installed packages.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

BUNDLED_FONTS = Path(__file__).resolve().parents[2] / "data" / "fonts"
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


def build_bundle(dest: Path, dpkg_info: Path | None = None, font_root: Path = DEBIAN_FONT_ROOT,
                 docs: Path = DEBIAN_DOCS, common_licences: Path = COMMON_LICENCE_DIR) -> list[BundledFont]:
    """Copy the installed training-font packages into ``dest`` (fonts, licences, manifest, README); return it.

    ``dest`` is emptied first, so the bundle holds exactly what the packages hold. The other folders are Debian's
    (dpkg's ``info/``, the fonts' root, package docs, full licence texts); tests point them at a fake system.
    """
    from .fonts import DEBIAN_FONT_PACKAGES, DPKG_INFO, dpkg_lists, package_fonts

    dpkg_info = dpkg_info or DPKG_INFO
    lists = dpkg_lists(dpkg_info)
    if not lists:
        raise FileNotFoundError(f"none of the Debian packages {', '.join(DEBIAN_FONT_PACKAGES)} is installed; "
                                "install them with `sudo apt-get install fonts-aenigma 'fonts-adf-*'` first.")
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
        # the fonts' own terms: the first "License:" field, which belongs to the "Files: *" paragraph
        licence_of[package] = re.search(r"^License: *(\S+)", copyright_text, re.MULTILINE).group(1)
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
    (dest / "README.md").write_text(bundle_readme(entries, licence_of, sorted(cited)))
    return entries


def bundle_readme(entries: list[BundledFont], licence_of: dict[str, str], full_texts: list[str]) -> str:
    """The bundle's README: where the files come from and under which terms they are redistributed."""
    counts: dict[tuple[str, str], int] = {}
    for font in entries:
        counts[font.package, font.version] = counts.get((font.package, font.version), 0) + 1
    rows = "\n".join(f"| `{package}` | {version} | {n} | {licence_of[package]}: `licences/{package}.copyright` |"
                      for (package, version), n in sorted(counts.items()))
    return f"""# GlyphWorld's training fonts (bundled)

Unmodified copies of the font files of these Debian packages, at the paths they install under `/usr/share/fonts/`,
so that GlyphWorld works on any machine without apt (see `ctxdiff_from_scratch/data/font_bundle.py`). Each package
is redistributed under its own licence, given in its Debian copyright file beside it; the full texts those files cite
are in `licences/` too ({", ".join(full_texts) or "none"}). These licences cover the fonts only; the rest of the
repository is under its own licence.

| package | version | font files | licence |
|---|---|---|---|
{rows}

`MANIFEST.tsv` lists every file with its size and SHA-256. `python -m ctxdiff_from_scratch fonts` checks the bundle;
`python -m ctxdiff_from_scratch fonts --bundle` rebuilds it from the installed packages (maintainers).
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctxdiff_from_scratch fonts",
                                     description="Check the bundled training fonts, or rebuild them from Debian's.")
    parser.add_argument("--bundle", action="store_true",
                        help="rebuild the bundle from the installed Debian packages (maintainers)")
    parser.add_argument("--dest", type=Path, default=BUNDLED_FONTS, help="bundle folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.bundle:
        entries = build_bundle(args.dest)
        packages = sorted({f"{f.package} {f.version}" for f in entries})
        print(f"bundled {len(entries)} font files of {len(packages)} packages into {args.dest}:", *packages, sep="\n  ")
        return
    files = bundled_font_files(args.dest)
    corrupt = [f.path for f in read_manifest(args.dest) if sha256_of(args.dest / f.path) != f.sha256]
    if corrupt:
        raise SystemExit(f"{len(corrupt)} bundled fonts differ from the manifest (first: {corrupt[0]}).")
    print(f"{len(files)} bundled font files in {args.dest}, all matching the manifest.")

"""The command line: help, errors, and the demo's episode galleries."""
import subprocess
import sys

import pytest

from ctxdiff_from_scratch.__main__ import main


def test_top_level_help_lists_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "autoencoder" in out and "encoders" in out


def test_unknown_command_exits_with_message():
    with pytest.raises(SystemExit, match="unknown command 'paint'"):
        main(["paint"])


def test_demo_writes_a_gallery_per_world_and_split(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ctxdiff_from_scratch", "demo", "--out", str(tmp_path)],
                            capture_output=True, text=True, check=True)
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["glyphs_test_episodes.png", "glyphs_train_episodes.png",
                       "shapes_test_episodes.png", "shapes_train_episodes.png"]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in written)
    assert f"wrote {tmp_path}" in result.stdout

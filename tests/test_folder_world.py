"""FolderWorld: a folder of images becomes edge2img episodes; bad files are skipped with warnings."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ctxdiff_from_scratch.data import FolderWorld
from ctxdiff_from_scratch.data.folder import edge_query


def make_folder(folder, n=6, size=48):
    """n images, each a light disc at a different place on a dark background, colours differing between images.

    (Canny works on brightness: a disc as bright as its background would have no edges.)"""
    rng = np.random.default_rng(0)
    for i in range(n):
        image = Image.new("RGB", (size, size + 10 * (i % 2)), tuple(int(v) for v in rng.integers(0, 80, 3)))
        x, y = rng.integers(8, 24, 2)
        ImageDraw.Draw(image).ellipse((x, y, x + 18, y + 18), fill=tuple(int(v) for v in rng.integers(170, 255, 3)))
        image.save(folder / f"img{i}.png")
    return folder


def test_episodes_pair_edges_with_their_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.png"):
        world = FolderWorld(tmp_path, size=32)
    assert world.num_images == 6 and world.tasks == ("edge2img",)
    ep = world.episode(3, k=3)
    assert ep.task == "edge2img" and ep.prompt == ""
    assert ep.query.shape == ep.target.shape == (3, 32, 32) and ep.context.shape == (3, 3, 32, 32)
    assert torch.equal(ep.query, edge_query(ep.target)), "the query is the target's edge map"
    assert set(ep.query.unique().tolist()) == {0.0, 1.0} and ep.query.mean() < 0.3, "white edges on black"
    target_index = [i for i in range(6) if torch.equal(world.images[i], ep.target)]
    context_index = [i for c in ep.context for i in range(6) if torch.equal(world.images[i], c)]
    assert len(target_index) == 1 and len(set(context_index)) == 3 and target_index[0] not in context_index


def test_edges_lie_on_the_disc_outline():
    image = Image.new("RGB", (64, 64), (20, 40, 200))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(250, 220, 30))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    edges = edge_query(tensor)[0]
    rows, cols = torch.nonzero(edges, as_tuple=True)
    radius = ((rows - 32.0) ** 2 + (cols - 32.0) ** 2).sqrt()
    assert len(rows) > 60 and (radius - 16).abs().max() <= 2


def test_episodes_are_deterministic_and_nested(tmp_path):
    world = FolderWorld(make_folder(tmp_path), size=24)
    a, b = world.episode(11, k=2), world.episode(11, k=2)
    assert torch.equal(a.context, b.context) and torch.equal(a.target, b.target) and torch.equal(a.query, b.query)
    assert torch.equal(world.episode(11, k=4).context[:2], a.context)
    assert world.episode(11, k=0).k == 0
    with pytest.raises(ValueError, match="k must be"):
        world.episode(0, k=6)
    with pytest.raises(ValueError, match="tasks"):
        world.episode(0, task="font2font")


def test_splits_are_disjoint_and_cover_the_folder(tmp_path):
    make_folder(tmp_path, n=10)
    train, test = FolderWorld(tmp_path, 16, split="train"), FolderWorld(tmp_path, 16, split="test")
    assert set(train.paths).isdisjoint(test.paths)
    assert len(train.paths) + len(test.paths) == 10 and len(test.paths) == 2
    with pytest.raises(ValueError, match="split"):
        FolderWorld(tmp_path, 16, split="valid")


def test_too_few_images_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        FolderWorld(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "only.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning, match="empty.jpg"), pytest.raises(ValueError, match="at least 2 readable images"):
        FolderWorld(tmp_path)
    with pytest.raises(FileNotFoundError):
        FolderWorld(tmp_path / "missing")

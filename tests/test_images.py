"""Loading user images: every Pillow mode, EXIF rotation, square cropping, clear errors, folder warnings, mean/std."""
import numpy as np
import pytest
import torch
from PIL import Image

from ctxdiff_from_scratch.images import (BadImageError, calculate_mean_std, load_folder, load_image_as_tensor,
                                         open_image)


def load(image_or_path, size=8):
    tensor = load_image_as_tensor(image_or_path, size)
    assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1
    return tensor


def colour_of(tensor):
    return [round(v, 2) for v in tensor.mean(dim=(1, 2)).tolist()]


@pytest.mark.parametrize("mode, pixel, expected, suffix", [
    ("1", 1, [1.0, 1.0, 1.0], ".png"),
    ("L", 128, [0.5, 0.5, 0.5], ".png"),
    ("LA", (0, 255), [0.0, 0.0, 0.0], ".png"),
    ("LA", (0, 0), [1.0, 1.0, 1.0], ".png"),  # fully transparent -> the white background
    ("RGB", (255, 0, 0), [1.0, 0.0, 0.0], ".png"),
    ("RGBA", (255, 0, 0, 255), [1.0, 0.0, 0.0], ".png"),
    ("RGBA", (255, 0, 0, 128), [1.0, 0.5, 0.5], ".png"),  # half-transparent red over white is pink
    ("RGBA", (0, 0, 255, 0), [1.0, 1.0, 1.0], ".png"),
    ("I;16", 32768, [0.5, 0.5, 0.5], ".png"),
    ("I", 65535, [1.0, 1.0, 1.0], ".tiff"),
    ("I", 100, [0.39, 0.39, 0.39], ".tiff"),  # values that fit 8 bits are read as 8-bit
    ("F", 0.25, [0.25, 0.25, 0.25], ".tiff"),
    ("CMYK", (0, 0, 0, 0), [1.0, 1.0, 1.0], ".tiff"),
    ("CMYK", (0, 255, 255, 0), [1.0, 0.0, 0.0], ".jpg"),
])
def test_every_mode_from_file_and_from_pil(tmp_path, mode, pixel, expected, suffix):
    image = Image.new(mode, (12, 12), pixel)
    path = tmp_path / f"image{suffix}"
    image.save(path)
    assert Image.open(path).mode == mode, "the file must really store this mode for the test to mean anything"
    atol = 0.03 if suffix == ".jpg" else 0.01
    np.testing.assert_allclose(colour_of(load(path)), expected, atol=atol)
    np.testing.assert_allclose(colour_of(load(image)), expected, atol=atol)


def test_palette_with_transparent_index_is_white(tmp_path):
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 10, 5))  # top half uses palette index 0, declared transparent below
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    tensor = load_image_as_tensor(path, 10)
    np.testing.assert_allclose(tensor[:, :4].mean(dim=(1, 2)).tolist(), [1, 1, 1], atol=0.02)  # transparent: white
    np.testing.assert_allclose(tensor[:, 6:].mean(dim=(1, 2)).tolist(), [1, 0, 0], atol=0.02)  # opaque red
    assert load(Image.new("PA", (4, 4), (1, 0))).min() > 0.99


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    upright = open_image(path)
    assert upright.size == (20, 40), "a 40x20 photo tagged orientation 6 is 20 wide and 40 tall when shown"
    pixels = np.asarray(upright, dtype=np.float32) / 255
    assert pixels[:8, 12:].mean(axis=(0, 1)).round(1).tolist() == [1.0, 0.0, 0.0]  # red now at the top right
    assert pixels[:8, :8].mean(axis=(0, 1)).round(1).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("width, height", [(60, 20), (20, 60)])
def test_non_square_is_centre_cropped(width, height):
    image = Image.new("RGB", (width, height), (255, 0, 0))
    third = max(width, height) // 3
    box = (third, 0, 2 * third, height) if width > height else (0, third, width, 2 * third)
    image.paste((0, 255, 0), box)  # red | green | red along the long side: the crop keeps only the green middle
    np.testing.assert_allclose(colour_of(load(image, size=16)), [0, 1, 0], atol=0.01)


def test_normalisation_uses_mean_and_std():
    image = Image.new("RGB", (8, 8), (255, 128, 0))
    plain = load_image_as_tensor(image, 8)
    mean, std = [0.5, 0.5, 0.25], [0.5, 0.25, 0.5]
    normed = load_image_as_tensor(image, 8, mean=mean, std=std)
    expected = (plain - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(normed, expected)
    with pytest.raises(ValueError, match="both mean and std"):
        load_image_as_tensor(image, 8, mean=mean)
    with pytest.raises(ValueError, match="3 values"):
        load_image_as_tensor(image, 8, mean=[0.5], std=[0.5])


def make_bad_files(folder):
    """An empty file, a truncated PNG, and a text file named .png; returns their names."""
    (folder / "empty.png").write_bytes(b"")
    good = folder / "_tmp.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[:200])
    good.unlink()
    (folder / "notes.png").write_text("this is not an image\n")
    return ["empty.png", "notes.png", "truncated.png"]


def test_clear_errors_name_the_file(tmp_path):
    for name in make_bad_files(tmp_path):
        with pytest.raises(BadImageError, match=name):
            load_image_as_tensor(tmp_path / name, 8)
    with pytest.raises(BadImageError, match="empty"):
        load_image_as_tensor(tmp_path / "empty.png", 8)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image_as_tensor(tmp_path / "missing.jpg", 8)
    with pytest.raises(IsADirectoryError, match="load_folder"):
        load_image_as_tensor(tmp_path, 8)


def test_folder_skips_bad_files_with_one_warning_each(tmp_path):
    bad = make_bad_files(tmp_path)
    Image.new("RGB", (20, 30), (255, 0, 0)).save(tmp_path / "b_red.jpg")
    Image.new("L", (30, 20), 0).save(tmp_path / "a_black.png")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are not images and not worth a warning
    with pytest.warns(UserWarning) as record:
        images, paths = load_folder(tmp_path, size=16)
    messages = [str(w.message) for w in record]
    assert len(messages) == len(bad)
    for name in bad:
        assert sum(name in m for m in messages) == 1
    assert [p.name for p in paths] == ["a_black.png", "b_red.jpg"]
    assert images.shape == (2, 3, 16, 16)
    assert colour_of(images[0]) == [0, 0, 0]
    np.testing.assert_allclose(colour_of(images[1]), [1, 0, 0], atol=0.02)


def test_folder_without_good_images_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_folder(tmp_path)
    make_bad_files(tmp_path)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="all 3 files were skipped"):
        load_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "nope")


def test_mean_std_matches_direct_torch():
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(5, 3, 7, 9, generator=generator) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    mean, std = calculate_mean_std(batch)
    torch.testing.assert_close(mean, batch.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(std, batch.std(dim=(0, 2, 3), correction=0))
    # a list of images of different sizes weighs every pixel equally
    images = [torch.rand(3, 4, 4, generator=generator), torch.rand(3, 10, 6, generator=generator)]
    flat = torch.cat([im.flatten(1) for im in images], dim=1)
    mean, std = calculate_mean_std(images)
    torch.testing.assert_close(mean, flat.mean(dim=1))
    torch.testing.assert_close(std, flat.std(dim=1, correction=0))


def test_mean_std_of_a_folder(tmp_path):
    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (10, 10), (0, 0, 0)).save(tmp_path / "black.png")
    mean, std = calculate_mean_std(tmp_path, size=8)
    torch.testing.assert_close(mean, torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(std, torch.tensor([0.5, 0.0, 0.0]))

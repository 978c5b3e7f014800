"""Loading your own images: any file Pillow reads becomes a square (3, size, size) float tensor in [0, 1].

What happens to an image, in order:

1. EXIF orientation is applied (``ImageOps.exif_transpose``), so phone photos stand the right way up.
2. Every Pillow mode becomes RGB: transparent images (RGBA, LA, PA, P or L with a transparent colour, ...) are
   composited onto **white**; 16-bit and 32-bit greyscale (I;16, I, F) are rescaled to [0, 1] (see ``_deep_to_gray``);
   1, L, P, CMYK, YCbCr, HSV, LAB go through Pillow's own conversion.
3. Non-square images are **centre-cropped to their short side**, then resized (Lanczos, antialiased) to
   ``size`` x ``size``. Cropping keeps proportions (squashing a wide photo into a square would distort every shape)
   and adds no padding bars (which a generative model would learn to paint); it loses the borders of the long side,
   which in most photos is background.

Files that cannot be read raise :class:`BadImageError` (a ``ValueError``) naming the file and what went wrong;
:func:`load_folder` turns those into one warning per file and keeps the good images.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

ImageSource = Union[str, Path, Image.Image]
_DEEP_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class BadImageError(ValueError):
    """A file exists but is not an image Pillow can decode (empty, truncated, corrupt, or another kind of file)."""


def _deep_to_gray(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale -> 8-bit 'L'. Pillow's own conversion clips at 255, which turns most such images white.

    I;16 is divided by 65535. For 'I' (32-bit int) and 'F' (float) the range is not stored in the file, so we assume
    the usual one that fits the data -- [0, 1] for floats, [0, 255] or [0, 65535] for integers -- and otherwise
    stretch the image's own min..max to [0, 1].
    """
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if image.mode.startswith("I;16"):
        scale = 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scale = 1.0
    elif image.mode == "I" and low >= 0 and high <= 255:
        scale = 255.0
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scale = 65535.0
    else:
        values, scale = values - low, max(high - low, 1e-12)
    return Image.fromarray(np.round(np.clip(values / scale, 0, 1) * 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'RGB', compositing transparency onto white (see the module docstring)."""
    if image.mode in _DEEP_GRAY_MODES:
        return _deep_to_gray(image).convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to the short side, then resize to ``size`` x ``size`` (Lanczos) in one resampling step."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))


def open_image(source: ImageSource, size: int | None = None) -> Image.Image:
    """Open a path (or take a PIL image) and return it upright and in RGB, at full resolution.

    ``size`` only lets JPEG decoding skip detail that would be resized away (``Image.draft``), which makes large
    photos load several times faster.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no image at {path}: check the spelling, or the working directory "
                                f"({Path.cwd()}) if the path is relative.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; use load_folder({str(path)!r}, size) to load the images in it.")
    if path.stat().st_size == 0:
        raise BadImageError(f"{path} is empty (0 bytes); it may be a failed download or copy.")
    try:
        with Image.open(path) as file:
            if size is not None and file.format == "JPEG":
                file.draft(file.mode, (size, size))
            file.load()
            return to_rgb(ImageOps.exif_transpose(file))
    except Exception as error:  # Pillow signals bad data with many types (OSError, SyntaxError, ValueError, ...)
        raise BadImageError(f"{path} could not be read as an image ({type(error).__name__}: {error}); it may be "
                            "truncated, corrupt, or not an image file at all.") from error


def _as_channel_vector(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    vector = torch.as_tensor(values, dtype=torch.float32).flatten()
    if vector.numel() != 3:
        raise ValueError(f"{name} must hold one value per RGB channel (3 values), got {vector.numel()}.")
    return vector.view(3, 1, 1)  # (3,) -> (3, 1, 1), broadcasts over (3, H, W)


def normalize(image: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
              ) -> torch.Tensor:
    """(x - mean) / std per channel, for (3, H, W) or (B, 3, H, W) images."""
    std = _as_channel_vector(std, "std")
    if (std <= 0).any():
        raise ValueError(f"std must be positive in every channel, got {std.flatten().tolist()}.")
    return (image - _as_channel_vector(mean, "mean")) / std


def load_image_as_tensor(source: ImageSource, size: int = 64, mean: Sequence[float] | torch.Tensor | None = None,
                         std: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """A path or PIL image -> (3, size, size) float tensor in [0, 1], or normalised if ``mean`` and ``std`` are given.

    Raises FileNotFoundError for a missing path and :class:`BadImageError` for a file that is not a readable image.
    """
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std to normalise, or neither to get values in [0, 1].")
    image = square_resize(open_image(source, size), size)
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)
    tensor = tensor.contiguous()
    return tensor if mean is None else normalize(tensor, mean, std)


def image_files(folder: str | Path) -> list[Path]:
    """The non-hidden files directly inside ``folder``, sorted by name (subfolders are not searched)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no folder at {folder}: check the path (working directory: {Path.cwd()}).")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder; use load_image_as_tensor for one image.")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_folder(folder: str | Path, size: int = 64, mean: Sequence[float] | torch.Tensor | None = None,
                std: Sequence[float] | torch.Tensor | None = None) -> tuple[torch.Tensor, list[Path]]:
    """Load every readable image directly inside ``folder`` -> (images (N, 3, size, size), their paths).

    Each file that is not a readable image is skipped with a warning naming it and the reason. Raises ValueError if
    the folder holds no readable image at all.
    """
    files = image_files(folder)
    images, paths = [], []
    for path in files:
        try:
            images.append(load_image_as_tensor(path, size, mean, std))
            paths.append(path)
        except BadImageError as error:
            warnings.warn(f"skipping {path.name}: {error}", stacklevel=2)
    if not images:
        detail = f"all {len(files)} files were skipped (see the warnings)" if files else "it is empty"
        raise ValueError(f"no readable images in {folder}: {detail}. Add .png or .jpg images to it.")
    return torch.stack(images), paths  # N x (3, S, S) -> (N, 3, S, S)


def calculate_mean_std(images: torch.Tensor | Sequence[torch.Tensor] | str | Path, size: int = 64
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over every pixel of every image -> (mean (3,), std (3,)).

    images: a (B, 3, H, W) or (3, H, W) tensor, a list of (3, H, W) tensors (sizes may differ), or a folder path
    (loaded with :func:`load_folder` at ``size``). The std is the population one (divide by the pixel count), the
    convention of ``torchvision.transforms.Normalize`` statistics.
    """
    if isinstance(images, (str, Path)):
        images = load_folder(images, size)[0]
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)  # (3, H, W) -> (1, 3, H, W)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}.")
        pixels = images.transpose(0, 1).reshape(3, -1)  # (B, 3, H, W) -> (3, B*H*W)
    else:
        if len(images) == 0:
            raise ValueError("calculate_mean_std got an empty list of images.")
        bad = [tuple(im.shape) for im in images if im.ndim != 3 or im.shape[0] != 3]
        if bad:
            raise ValueError(f"every image in the list must be (3, H, W); got shapes {bad[:3]}.")
        pixels = torch.cat([im.reshape(3, -1) for im in images], dim=1)  # each (3, H, W) -> (3, H*W), concatenated
    pixels = pixels.double()  # float64 sums: a million pixels in float32 lose digits
    mean = pixels.mean(dim=1)
    # std = sqrt(mean((x - mean)^2))
    std = (pixels - mean[:, None]).pow(2).mean(dim=1).sqrt()
    return mean.float(), std.float()

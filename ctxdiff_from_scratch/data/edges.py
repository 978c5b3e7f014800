"""Canny edge maps from scratch, in vectorised NumPy: the *query* of the edge2img tasks.

Canny (1986) in five steps, each a small function below:

1. Gaussian blur, so that pixel noise does not become edges;
2. Sobel gradients, giving an edge strength (magnitude) and a direction (angle) per pixel;
3. non-maximum suppression, keeping only pixels that are the ridge of the magnitude across the edge (1 px wide);
4. double threshold: ``strong`` pixels (>= high) are edges for sure, ``weak`` ones (>= low) maybe;
5. hysteresis: a weak pixel is kept only if it is 8-connected, through weak pixels, to a strong one.

Colour images are reduced to brightness (luma) first, as in classic Canny: two colours of equal brightness meet
without an edge.

Magnitudes follow scikit-image's convention (unnormalised Sobel responses), so ``low``/``high`` mean the same as
there: an ideal 0 -> 1 step blurred with ``sigma=1`` peaks at about 2.6, a 0.1-contrast step at about 0.26.
"""
from __future__ import annotations

import numpy as np

# Canny settings for query maps computed from images (FolderWorld, ShapesWorld's canny2img): thresholds high enough
# that mostly object outlines survive at 64 px, while strong texture edges still leak through as in real Canny maps.
QUERY_CANNY = {"sigma": 1.0, "low": 0.3, "high": 0.6}
# ITU-R BT.601 luma weights: how much red, green and blue contribute to perceived brightness.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) float image -> (H, W) float64 luma."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return np.einsum("hwc,c->hw", image, LUMA_WEIGHTS)  # (H, W, 3) -> (H, W)
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}; "
                     "convert a (3, H, W) torch tensor with tensor.permute(1, 2, 0).numpy().")


def gaussian_blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (..., H, W) image or stack; edges are padded by repeating the border pixel.

    The kernel is truncated at 4 sigma (as in SciPy), so a 1-pixel sigma uses 9 taps per axis.
    """
    if sigma <= 0:
        return gray
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    # g(x) = exp(-x^2 / (2 sigma^2)) / Z, normalised to sum to 1
    kernel = np.exp(-offsets**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    h, w = gray.shape[-2:]
    pad = [(0, 0)] * (gray.ndim - 2) + [(radius, radius), (radius, radius)]
    padded = np.pad(gray, pad, mode="edge")  # (..., H, W) -> (..., H + 2r, W + 2r)
    rows = sum(k * padded[..., i : i + h, :] for i, k in enumerate(kernel))  # blur along rows: (..., H, W + 2r)
    return sum(k * rows[..., i : i + w] for i, k in enumerate(kernel))  # blur along columns: (..., H, W)


def sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel gradients of an (H, W) image -> (magnitude, angle), both (H, W).

    ``angle = atan2(g_y, g_x)`` in radians, with x along columns (right) and y along rows (down).
    """
    p = np.pad(np.asarray(gray, dtype=np.float64), 1, mode="edge")  # (H, W) -> (H + 2, W + 2)
    h, w = p.shape[0] - 2, p.shape[1] - 2

    def shifted(dr: int, dc: int) -> np.ndarray:  # the neighbour at (row + dr, col + dc) of every pixel
        return p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

    # g_x = [1 2 1]^T [-1 0 1] * I: a central difference across columns, smoothed over 3 rows
    gx = (shifted(-1, 1) + 2 * shifted(0, 1) + shifted(1, 1)) - (shifted(-1, -1) + 2 * shifted(0, -1) + shifted(1, -1))
    # g_y = [-1 0 1]^T [1 2 1] * I
    gy = (shifted(1, -1) + 2 * shifted(1, 0) + shifted(1, 1)) - (shifted(-1, -1) + 2 * shifted(-1, 0) + shifted(-1, 1))
    # |g| = sqrt(g_x^2 + g_y^2)
    return np.hypot(gx, gy), np.arctan2(gy, gx)


# Gradient direction (angle mod 180 deg, in 45 deg bins) -> the neighbour step (d_row, d_col) along that direction.
_NMS_STEPS = ((0, 1), (1, 1), (1, 0), (1, -1))


def non_maximum_suppression(magnitude: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Keep the magnitude where it is a local maximum along the gradient direction, else 0.

    Ties (a step edge splits its gradient evenly over the two pixels beside it) are broken by keeping the pixel on
    the forward side only, so edges come out one pixel wide. "Equal" allows for float rounding (``tie`` below).
    """
    h, w = magnitude.shape
    tie = 1e-9 * max(magnitude.max(), 1.0)
    p = np.pad(magnitude, 1)  # (H, W) -> (H + 2, W + 2), zeros outside
    direction = np.round(np.degrees(angle) / 45.0).astype(np.int64) % 4  # 0: horizontal gradient, 2: vertical, ...
    keep = np.zeros((h, w), dtype=bool)
    for d, (dr, dc) in enumerate(_NMS_STEPS):
        ahead = p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]
        behind = p[1 - dr : 1 - dr + h, 1 - dc : 1 - dc + w]
        keep |= (direction == d) & (magnitude > ahead + tie) & (magnitude >= behind - tie)
    return np.where(keep, magnitude, 0.0)


def hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Keep the 8-connected components of ``weak`` (bool (H, W)) that contain at least one ``strong`` pixel.

    Connected components by label propagation with pointer jumping: every weak pixel starts labelled with its own
    flat index; each round it looks at the largest label among its weak 8-neighbours, hands that label to the pixel
    its own label points at (so whole chains are relabelled at once), and then follows labels to their end. The
    number of rounds grows with the log of the edge length, not with the length itself.
    """
    h, w = weak.shape
    weak_index = np.flatnonzero(weak)  # (M,) flat indices of the candidate pixels
    labels = np.full(h * w, -1)  # (H*W,): -1 outside the candidates
    labels[weak_index] = weak_index
    while True:
        grid = np.pad(labels.reshape(h, w), 1, constant_values=-1)  # (H*W,) -> (H + 2, W + 2)
        best = labels.reshape(h, w).copy()  # (H*W,) -> (H, W)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                np.maximum(best, grid[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w], out=best)
        neighbour_best = best.ravel()[weak_index]  # (H, W) -> (M,)
        old = labels[weak_index]
        np.maximum.at(labels, old, neighbour_best)  # hook: the pixel my label points at adopts my best label
        current = np.maximum(labels[weak_index], neighbour_best)
        while not np.array_equal(jumped := labels[current], current):  # compress: follow labels to their end
            current = jumped
        labels[weak_index] = current
        if np.array_equal(current, old):
            break
    component_has_strong = np.zeros(h * w, dtype=bool)
    component_has_strong[labels[np.flatnonzero(strong & weak)]] = True
    edges = np.zeros(h * w, dtype=bool)
    edges[weak_index] = component_has_strong[labels[weak_index]]
    return edges.reshape(h, w)  # (H*W,) -> (H, W)


def canny(image: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny edge map of an (H, W) or (H, W, 3) float image in [0, 1] -> (H, W) bool, True on edges.

    sigma: Gaussian blur in pixels (0 disables it); larger values keep only coarser edges.
    low, high: hysteresis thresholds on the Sobel magnitude (scikit-image's scale; see the module docstring).
    """
    if not 0 <= low <= high:
        raise ValueError(f"canny needs 0 <= low <= high, got low={low}, high={high}.")
    magnitude, angle = sobel(gaussian_blur(to_gray(image), sigma))
    ridge = non_maximum_suppression(magnitude, angle)
    # a pixel is a candidate only if it is a ridge (> 0) above the low threshold; this also keeps flat images empty
    weak = (ridge >= low) & (ridge > 0)
    return hysteresis(weak, ridge >= high)

"""Canny edges from scratch: edges where they should be, one pixel wide, none in flat regions."""
import time

import numpy as np
import pytest

from ctxdiff_from_scratch.data.edges import canny, gaussian_blur, hysteresis, sobel


def square(size=64, lo=16, hi=48, value=1.0):
    image = np.zeros((size, size))
    image[lo:hi, lo:hi] = value
    return image


def test_canny_square_edges_on_boundary_none_inside_and_thin():
    edges = canny(square())
    rows, cols = np.nonzero(edges)
    # every edge pixel lies within one pixel of the square's boundary (the step sits between pixels 15|16 and 47|48)
    dist_to_boundary = np.minimum.reduce([np.abs(rows - 15.5), np.abs(rows - 47.5), np.abs(cols - 15.5),
                                          np.abs(cols - 47.5)])
    on_side = ((rows >= 15) & (rows <= 48) & (cols >= 15) & (cols <= 48))
    assert np.all(dist_to_boundary <= 1) and np.all(on_side)
    assert not edges[20:44, 20:44].any(), "no edges inside the flat square"
    assert not edges[:12].any() and not edges[52:].any(), "no edges in the flat background"
    # thin: each of the four sides is crossed by exactly one edge pixel away from the corners
    for line in (edges[32, :], edges[:, 32], edges[24, :], edges[:, 40]):
        assert line.sum() == 2, f"expected one pixel per side, got {np.nonzero(line)[0]}"
    # closed outline: roughly the perimeter of a 32-pixel square
    assert 4 * 28 <= edges.sum() <= 4 * 34


def test_canny_accepts_rgb_and_is_invariant_to_grey_colour_channels():
    gray = square()
    rgb = np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    np.testing.assert_array_equal(canny(rgb), canny(gray))


def test_canny_flat_image_has_no_edges_and_thresholds_matter():
    assert not canny(np.full((32, 32, 3), 0.7)).any()
    faint = square(value=0.05)  # a 0.05-contrast step peaks near 0.13 in Sobel magnitude, below high=0.2
    assert not canny(faint).any()
    assert canny(faint, low=0.05, high=0.1).any()


def test_canny_rejects_bad_input():
    with pytest.raises(ValueError, match="low <= high"):
        canny(square(), low=0.3, high=0.2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        canny(np.zeros((3, 16, 16)))


def test_sobel_direction_and_blur_preserves_mean():
    ramp = np.tile(np.arange(16.0), (16, 1))  # brightness grows to the right
    magnitude, angle = sobel(ramp)
    assert np.allclose(magnitude[2:-2, 2:-2], 8.0)  # [1 2 1] x [-1 0 1] on a unit ramp: 4 * 2
    assert np.allclose(angle[2:-2, 2:-2], 0.0)
    magnitude, angle = sobel(ramp.T)  # brightness grows downwards: angle +90 degrees
    assert np.allclose(angle[2:-2, 2:-2], np.pi / 2)
    rng = np.random.default_rng(0)
    noise = rng.random((32, 32))
    blurred = gaussian_blur(noise, 1.5)
    assert blurred.std() < noise.std() / 2 and abs(blurred.mean() - noise.mean()) < 0.01


def flood_fill_reference(weak, strong):
    """Plain breadth-first search: the textbook definition of hysteresis, to check the vectorised version."""
    h, w = weak.shape
    keep = np.zeros_like(weak)
    stack = [tuple(p) for p in np.argwhere(strong & weak)]
    while stack:
        r, c = stack.pop()
        if keep[r, c]:
            continue
        keep[r, c] = True
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < h and 0 <= cc < w and weak[rr, cc] and not keep[rr, cc]:
                    stack.append((rr, cc))
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_hysteresis_matches_flood_fill(seed):
    rng = np.random.default_rng(seed)
    weak = rng.random((40, 40)) < 0.45
    strong = weak & (rng.random((40, 40)) < 0.02)
    np.testing.assert_array_equal(hysteresis(weak, strong), flood_fill_reference(weak, strong))


def test_hysteresis_follows_a_long_snake():
    # a 1-pixel serpentine path is the worst case for label propagation: a strong pixel at one end must reach the other
    size = 41
    snake = np.zeros((size, size), dtype=bool)
    snake[::2] = True  # rows 0, 2, 4, ... joined alternately at the right and at the left end
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    strong = np.zeros_like(snake)
    strong[0, 0] = True
    assert hysteresis(snake, strong).sum() == snake.sum()
    np.testing.assert_array_equal(hysteresis(snake, strong), flood_fill_reference(snake, strong))
    cut = snake.copy()
    cut[20, 5] = False  # cutting the path disconnects the far part
    np.testing.assert_array_equal(hysteresis(cut, strong), flood_fill_reference(cut, strong))
    assert hysteresis(cut, strong).sum() < cut.sum()


def test_canny_is_fast_at_64():
    image = np.random.default_rng(0).random((64, 64, 3))
    canny(image)
    start = time.perf_counter()
    for _ in range(20):
        canny(image)
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.02, f"canny took {per_call * 1e3:.1f} ms at 64x64 (noise, the worst case)"

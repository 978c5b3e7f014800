"""metrics.py: FD-ours against closed forms, bootstrap intervals, and layout fidelity on hand-made and world images."""
import math

import numpy as np
import pytest
import torch

from ctxdiff_from_scratch.data import ShapesWorld
from ctxdiff_from_scratch.data.edges import QUERY_CANNY, canny
from ctxdiff_from_scratch.encoders import ImageEncoder, ImageEncoderConfig
from ctxdiff_from_scratch.metrics import (FD_OURS, bootstrap_ci, dilate, fd_ours, format_ci, image_features,
                                          layout_edge_maps, layout_fidelity, paired_bootstrap_ci, paired_fd,
                                          pooled_ratio, root_mean)


def white_features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(n, d) float64 with mean exactly 0 and sample covariance exactly I (centred, orthogonal columns)."""
    a = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(dim=0))  # columns: orthonormal, and centred (combinations of centred columns)
    return q * math.sqrt(n - 1)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# --- FD-ours ---------------------------------------------------------------------------------------------------------
def test_fd_ours_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    assert fd_ours(x, x) == pytest.approx(0.0, abs=1e-9)
    assert FD_OURS == "FD-ours"


def test_fd_ours_of_shifted_means_is_the_squared_shift():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.25], dtype=torch.float64)
    assert fd_ours(x, x + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)


def test_fd_ours_of_diagonal_covariances_matches_the_closed_form_and_ignores_rotations():
    # S_a = diag(a), S_b = diag(b): FD = ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a = torch.tensor([1.0, 4.0, 0.25, 9.0], dtype=torch.float64)
    b = torch.tensor([2.0, 1.0, 0.25, 16.0], dtype=torch.float64)
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    x = white_features(500, 4, seed=2) * a.sqrt() + mu_a
    y = white_features(400, 4, seed=3) * b.sqrt() + mu_b
    expected = float((mu_a - mu_b).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert fd_ours(x, y) == pytest.approx(expected, rel=1e-9)
    # a rotation of the feature space changes neither distances nor traces: FD stays the same
    rotation = random_orthogonal(4, seed=4)
    assert fd_ours(x @ rotation, y @ rotation) == pytest.approx(expected, rel=1e-9)


def test_fd_ours_is_symmetric_and_positive_for_non_commuting_covariances():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 5, generator=g) @ torch.randn(5, 5, generator=g)
    y = torch.randn(300, 5, generator=g) @ torch.randn(5, 5, generator=g) + 0.5
    assert fd_ours(x, y) == pytest.approx(fd_ours(y, x), rel=1e-9) and fd_ours(x, y) > 0
    # fewer images than dimensions: rank-deficient covariances still give a finite, non-negative value
    assert fd_ours(x[:3], y[:4]) >= 0 and math.isfinite(fd_ours(x[:3], y[:4]))


def test_fd_ours_explains_bad_inputs():
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="N >= 2"):
        fd_ours(x[:1], x)
    with pytest.raises(ValueError, match="same image encoder"):
        fd_ours(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"\(N, D\) feature matrix"):
        fd_ours(x[0], x)
    with pytest.raises(ValueError, match="NaN"):
        fd_ours(x, torch.full((10, 4), float("nan")))


def test_image_features_are_the_frozen_encoders_pooled_embeddings():
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig.profile("tiny")).eval().requires_grad_(False)
    images = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    features = image_features(encoder, images, batch_size=3)
    assert features.shape == (7, encoder.config.embed_dim) and features.dtype == torch.float32
    assert torch.allclose(features, encoder(images).pooled, atol=1e-6)
    assert fd_ours(features, image_features(encoder, images)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        image_features(encoder, images[0])
    # other sizes are resized to the encoder's, as the model resizes its context images: a flat colour stays itself
    colours = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]])[:, :, None, None]  # (2, 3) -> (2, 3, 1, 1)
    small, large = colours.expand(-1, -1, 16, 16), colours.expand(-1, -1, 40, 40)
    assert torch.allclose(image_features(encoder, large), image_features(encoder, small), atol=1e-5)


# --- bootstrap -------------------------------------------------------------------------------------------------------
def test_a_constant_sample_has_a_zero_width_interval():
    assert bootstrap_ci([0.3] * 20) == pytest.approx((0.3, 0.3, 0.3))
    assert paired_bootstrap_ci([0.5] * 9, [0.2] * 9) == pytest.approx((0.3, 0.3, 0.3))


def test_the_estimate_is_the_statistic_of_the_whole_sample_and_the_seed_fixes_the_interval():
    values = np.random.default_rng(7).exponential(size=50)
    for statistic in (np.mean, np.median, root_mean):
        estimate, low, high = bootstrap_ci(values, statistic=statistic)
        assert estimate == pytest.approx(float(statistic(values))) and low <= estimate <= high
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(torch.from_numpy(values), seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert root_mean(np.array([0.01, 0.03])) == pytest.approx(math.sqrt(0.02))  # RMSE from per-image MSEs


def test_the_95_percent_interval_of_a_normal_mean_has_its_textbook_width_and_coverage():
    rng = np.random.default_rng(8)
    # one large sample: half-width ~ 1.96 sigma / sqrt(N)
    _, low, high = bootstrap_ci(rng.normal(1.0, 2.0, size=400))
    assert (high - low) / 2 == pytest.approx(1.96 * 2.0 / math.sqrt(400), rel=0.15)
    # many small samples: about 95% of the intervals hold the true mean (deterministic with these seeds)
    covered = [low <= 1.0 <= high for _, low, high in
               (bootstrap_ci(rng.normal(1.0, 2.0, size=40), resamples=500, seed=i) for i in range(200))]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_the_paired_interval_cancels_what_the_episodes_share():
    rng = np.random.default_rng(9)
    difficulty = rng.normal(0.0, 1.0, size=60)  # shared by both methods on each episode
    a = difficulty + rng.normal(0.0, 0.05, size=60)
    b = difficulty + 0.1 + rng.normal(0.0, 0.05, size=60)
    estimate, low, high = paired_bootstrap_ci(a, b)
    assert estimate == pytest.approx(a.mean() - b.mean()) and high < 0  # a is better, and it is not noise
    _, low_a, high_a = bootstrap_ci(a)
    _, low_b, high_b = bootstrap_ci(b)
    assert low_b < high_a, "separately, the two intervals overlap"
    assert high - low < 0.1 * (high_a - low_a)


def test_rows_of_an_episode_are_resampled_together_for_a_pooled_ratio():
    # (squared error, values) per episode: the pooled ratio is sum / sum, not the mean of the per-episode ratios
    rows = np.array([[1.0, 10.0], [3.0, 10.0], [0.0, 0.0], [8.0, 20.0]])
    assert pooled_ratio(rows) == pytest.approx(12.0 / 40.0) and pooled_ratio(rows[2:3]) == 0.0
    estimate, low, high = bootstrap_ci(rows, statistic=pooled_ratio, resamples=300)
    # each replicate pools whole rows, so it lies between the smallest and the largest episode ratio (0.1, 0.4)
    assert estimate == pytest.approx(0.3) and 0.0 <= low < 0.3 < high <= 0.4
    assert paired_bootstrap_ci(rows, rows, statistic=pooled_ratio) == (0.0, 0.0, 0.0)


def test_paired_fd_compares_the_two_halves_of_each_row():
    a = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    b = a + torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    assert paired_fd(torch.cat([a, b], dim=1).numpy()) == pytest.approx(5.0, rel=1e-9)
    assert paired_fd(torch.cat([a, a], dim=1).numpy()) == pytest.approx(0.0, abs=1e-9)
    assert paired_fd(torch.cat([a, b], dim=1).numpy()) == pytest.approx(fd_ours(a, b))


def test_bootstrap_explains_bad_inputs_and_formats_intervals():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci(np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([1.0, 2.0], resamples=0)
    with pytest.raises(ValueError, match="same episodes"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    assert format_ci((0.5, 0.4, 0.7)) == "0.500 +- 0.150" and format_ci((1.0, 0.5, 1.5), digits=1) == "1.0 +- 0.5"


# --- layout fidelity -------------------------------------------------------------------------------------------------
def square_image(top: int, left: int, side: int = 12, size: int = 32) -> torch.Tensor:
    """(3, size, size): a dark filled square on white."""
    image = torch.ones(3, size, size)
    image[:, top:top + side, left:left + side] = 0.2
    return image


def edges_of(image: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(canny(image.permute(1, 2, 0).numpy(), **QUERY_CANNY))  # (3, H, W) -> (H, W)


def test_layout_fidelity_on_hand_made_images():
    square = square_image(10, 10)
    edges = edges_of(square)[None]  # (1, H, W)
    assert edges.any()
    assert layout_fidelity(square[None], edges).tolist() == [1.0]  # identical
    near = layout_fidelity(square_image(11, 10)[None], edges)  # one pixel off: the dilation forgives it
    far = layout_fidelity(square_image(16, 16)[None], edges)  # further off than the dilation
    assert 0.6 < near.item() < 1 and far.item() < 0.5 * near.item()
    assert layout_fidelity(square_image(11, 10)[None], edges, dilation=0).item() < near.item()
    blank = torch.ones(1, 3, 32, 32)
    assert layout_fidelity(blank, edges).tolist() == [0.0]  # nothing drawn where edges should be
    assert layout_fidelity(blank, torch.zeros(1, 32, 32, dtype=torch.bool)).tolist() == [1.0]  # nothing to draw
    # an edge map image (white edges on black, like edge2img's query) means the same as the bool map
    edge_image = edges.float()[:, None].expand(1, 3, 32, 32)  # (1, H, W) -> (1, 3, H, W)
    assert torch.equal(layout_fidelity(square[None], edge_image), layout_fidelity(square[None], edges))


def test_dilate_grows_masks_by_the_radius():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    assert dilate(mask, 0) is mask and dilate(mask, 1).sum() == 9 and dilate(mask, 2).sum() == 25


def test_layout_fidelity_of_shapesworld_targets_against_their_own_layouts():
    world, seeds = ShapesWorld("test", size=64), range(12)
    batch_targets = torch.stack([world.episode(seed, "edge2img", k=1).target for seed in seeds])
    queries = torch.stack([world.episode(seed, "edge2img", k=1).query for seed in seeds])
    own = layout_edge_maps(world, seeds, "edge2img", k=1)
    assert torch.equal(own, queries.mean(dim=1) > 0.5), "edge2img's query is the target layout's edge map"
    assert torch.equal(layout_edge_maps(world, seeds, "seg2img", 1)[0],
                       world.render_maps(world.episode_spec(0, "seg2img", 1).target_layout)["edge"][0] > 0.5)
    others = torch.roll(own, 1, dims=0)  # each target against another episode's layout
    score_own, score_other = layout_fidelity(batch_targets, own), layout_fidelity(batch_targets, others)
    assert score_own.mean() > 0.45 and score_own.mean() > 3 * score_other.mean()
    assert torch.equal(layout_fidelity(batch_targets, queries), score_own)


def test_layout_fidelity_explains_bad_inputs():
    images = torch.ones(2, 3, 16, 16)
    with pytest.raises(ValueError, match="query_layout_edges must be"):
        layout_fidelity(images, torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_layout_edges must be"):
        layout_fidelity(images, torch.zeros(2, 16, 16))  # a float map without channels
    with pytest.raises(ValueError, match="dilation"):
        layout_fidelity(images, torch.zeros(2, 16, 16, dtype=torch.bool), dilation=-1)
    with pytest.raises(ValueError, match="generated must be"):
        layout_fidelity(images[:, 0], torch.zeros(2, 16, 16, dtype=torch.bool))

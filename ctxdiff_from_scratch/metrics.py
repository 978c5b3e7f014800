"""The metrics of the paper's tables at toy scale, beyond those in ``evaluate.py``, and their confidence intervals.

``evaluate.py`` already holds RMSE as Prompt Diffusion computes it (``rmse``, ``per_image_mse``), the glyph IoU
(``glyph_iou``), the shape-pixel error (``shape_pixel_errors``) and colour binding (``shape_colour_scores``). This
module adds what the paper's Table 2 and 3 need next to them:

* **FD-ours** (:func:`fd_ours`): the Frechet distance between two sets of image features, as FID computes it, but on
  the features of *this project's* frozen image encoder (:func:`image_features`): Inception weights cannot be had
  offline. Its values are not FIDs and are comparable only between runs that use the same encoder and as many
  images; call it "FD-ours" everywhere (``FD_OURS``), never FID.
* **Layout fidelity** (:func:`layout_fidelity`): does the generated image keep the query's layout? The IoU of the
  dilated edges of the generated image (the project's Canny, ``data/edges.py``) and of the layout's edge map.
* **Bootstrap confidence intervals** (:func:`bootstrap_ci`, :func:`paired_bootstrap_ci`): every number in a table is
  a statistic over episodes (:func:`root_mean`, :func:`pooled_ratio`, :func:`paired_fd`, a mean), shown as estimate
  +- the half-width of its 95% interval (:func:`format_ci`).

This module does not import ``evaluate.py``, so that the evaluation harness may import it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.edges import QUERY_CANNY, canny
from .data.shapes_layout import edge_map, rasterize

FD_OURS = "FD-ours"  # the label of fd_ours in every table and plot: a Frechet distance, but not an FID
EDGE_THRESHOLD = 0.5  # a pixel of an edge map image (white edges on black) is an edge above this
FEATURE_BATCH = 256  # images per forward pass of the image encoder in image_features


# --- FD-ours ---------------------------------------------------------------------------------------------------------
def _as_float64(features, name: str) -> torch.Tensor:
    features = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if features.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix, one row per image, got shape "
                         f"{tuple(features.shape)}; compute it with image_features(image_encoder, images).")
    if features.shape[0] < 2:
        raise ValueError(f"{name} holds {features.shape[0]} feature vector(s); a covariance needs N >= 2 (and "
                         "FD-ours is only stable with many more images than feature dimensions).")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the images and the encoder.")
    return features


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """S^{1/2} = V diag(sqrt(max(lambda, 0))) V^T of a symmetric PSD matrix S = V diag(lambda) V^T (eigh)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T  # V diag(s) = V * s (broadcast)


def fd_ours(features_a, features_b) -> float:
    """FD-ours: the Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D).

        FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

    (Dowson & Landau 1982; the formula of FID, Heusel et al. 2017), with mu the feature means and S the unbiased
    covariances. Computed in float64. The trace of the matrix square root needs no (non-symmetric) sqrtm: S_a S_b has
    the eigenvalues of the symmetric PSD matrix S_a^{1/2} S_b S_a^{1/2}, so

        Tr (S_a S_b)^{1/2} = sum_i sqrt(lambda_i(S_a^{1/2} S_b S_a^{1/2})),

    with both square roots from symmetric eigendecompositions (tiny negative eigenvalues from rounding are set to 0).
    The estimate is biased upwards when N is small against D: compare values computed from equally many images.
    """
    a, b = _as_float64(features_a, "features_a"), _as_float64(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a has {a.shape[1]} dimensions but features_b {b.shape[1]}; both must come from "
                         "the same image encoder.")
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)  # (N, D) -> (D,)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (D, N) -> (D, D), divided by N - 1
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    # Tr (S_a S_b)^{1/2} = sum_i sqrt(lambda_i(S_a^{1/2} S_b S_a^{1/2}))
    trace_root = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    # FD = ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr (S_a S_b)^{1/2}
    return float((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root)


@torch.no_grad()
def image_features(image_encoder: torch.nn.Module, images: torch.Tensor, batch_size: int = FEATURE_BATCH
                   ) -> torch.Tensor:
    """The frozen image encoder's pooled embeddings of ``images`` (N, 3, H, W) in [0, 1] -> (N, E) float32 on the CPU:
    the features FD-ours compares (``ImageEncoder(...)(images).pooled``, encoders.py).

    Images of another size than the encoder's (``image_encoder.config.image_size``) are resized to it, as the model
    resizes its context images (``ContextDiffusionModel.encode_context``); they are encoded in chunks of
    ``batch_size`` on the encoder's device, in eval mode.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty (N, 3, H, W) batch in [0, 1], got shape {tuple(images.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    size = image_encoder.config.image_size
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)  # (N, 3, H, W) -> (N, 3, size, size)
    device = next(image_encoder.parameters()).device
    was_training = image_encoder.training
    image_encoder.eval()
    pooled = [image_encoder(images[i:i + batch_size].to(device, torch.float32)).pooled.float().cpu()
              for i in range(0, images.shape[0], batch_size)]
    image_encoder.train(was_training)
    return torch.cat(pooled)  # chunks x (n, E) -> (N, E)


# --- layout fidelity -------------------------------------------------------------------------------------------------
def _edge_masks(edges: torch.Tensor, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) bool, or (B, 3, H, W) edge map images (white edges on black, as ShapesWorld draws them) -> bool."""
    if edges.ndim == 4 and edges.shape[1] == 3:
        edges = edges.float().mean(dim=1) > EDGE_THRESHOLD  # (B, 3, H, W) -> (B, H, W)
    if edges.dtype != torch.bool or tuple(edges.shape) != (batch, *size):
        raise ValueError(f"query_layout_edges must be ({batch}, {size[0]}, {size[1]}) bool or ({batch}, 3, {size[0]}, "
                         f"{size[1]}) edge map images, got {edges.dtype} {tuple(edges.shape)}; ShapesWorld draws them "
                         "with render_maps(layout)['edge'] (or layout_edge_maps).")
    return edges


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow the True pixels of (B, H, W) bool masks by ``radius`` pixels in every direction (a square structuring
    element: max-pooling with a (2r + 1) x (2r + 1) window)."""
    if radius == 0:
        return masks
    pooled = F.max_pool2d(masks[:, None].float(), 2 * radius + 1, stride=1, padding=radius)  # (B, H, W) -> (B, 1, H, W)
    return pooled[:, 0] > 0  # (B, 1, H, W) -> (B, H, W)


def layout_fidelity(generated: torch.Tensor, query_layout_edges: torch.Tensor, dilation: int = 1,
                    canny_settings: dict | None = None) -> torch.Tensor:
    """Does each generated image keep its query's layout? (B,) IoU of dilated edge maps.

        LF_i = |D(E(x_i)) & D(L_i)| / |D(E(x_i)) | D(L_i)|,  1 when both are empty

    with E the project's Canny (``data/edges.py``, by default ``QUERY_CANNY``, the settings of canny2img's queries),
    L_i the layout's edge map and D a dilation by ``dilation`` pixels, which forgives edges that land a pixel or two
    off (Canny's ridge and the layout's one-pixel boundary need not coincide).

    generated: (B, 3, H, W) in [0, 1]; query_layout_edges: (B, H, W) bool or (B, 3, H, W) edge map images (the query
    of edge2img, ``render_maps(layout)["edge"]``, :func:`layout_edge_maps`).
    Textures and patterned backgrounds have edges of their own, so even a ground-truth ShapesWorld target scores below
    1 (on average about 0.6 at 64 px with the defaults): report the targets' own score beside a model's.
    """
    if generated.ndim != 4 or generated.shape[1] != 3:
        raise ValueError(f"generated must be (B, 3, H, W) images in [0, 1], got shape {tuple(generated.shape)}.")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"dilation must be a whole number of pixels >= 0, got {dilation!r}.")
    batch, size = generated.shape[0], tuple(generated.shape[-2:])
    layout = _edge_masks(query_layout_edges.cpu(), batch, size)
    settings = QUERY_CANNY if canny_settings is None else canny_settings
    found = torch.from_numpy(np.stack([canny(image.permute(1, 2, 0).numpy(), **settings)  # (3, H, W) -> (H, W, 3)
                                       for image in generated.detach().float().cpu()]))  # B x (H, W) -> (B, H, W)
    a, b = dilate(found, dilation), dilate(layout, dilation)
    intersection = (a & b).flatten(1).sum(dim=1).float()  # (B, H, W) -> (B,)
    union = (a | b).flatten(1).sum(dim=1).float()  # (B, H, W) -> (B,)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def layout_edge_maps(world, seeds: Sequence[int], task: str, k: int) -> torch.Tensor:
    """(N, H, W) bool: the edge map of each ShapesWorld episode's target layout, whatever the task's query shows."""
    return torch.from_numpy(np.stack([edge_map(rasterize(world.episode_spec(seed, task=task, k=k).target_layout,
                                                         world.size))[0] > EDGE_THRESHOLD for seed in seeds]))


# --- bootstrap confidence intervals ----------------------------------------------------------------------------------
def root_mean(values: np.ndarray) -> float:
    """sqrt(mean_i v_i): RMSE from per-image MSEs (Prompt Diffusion's convention), as a statistic to bootstrap."""
    return float(np.sqrt(np.mean(values)))


def pooled_ratio(values: np.ndarray) -> float:
    """sum_i a_i / sum_i b_i of rows (a_i, b_i), 0 when every b_i is 0: a ratio pooled over episodes, such as the
    shape-pixel MSE (squared error, values summed) or colour binding (shapes bound, shapes counted), to bootstrap."""
    denominator = values[:, 1].sum()
    return float(values[:, 0].sum() / denominator) if denominator > 0 else 0.0


def paired_fd(values: np.ndarray) -> float:
    """FD-ours between the left and the right half of rows (N, 2D): each row one episode's generated-image features
    beside its ground truth's, so that a bootstrap resamples episodes with both of their images."""
    half = values.shape[1] // 2
    return fd_ours(values[:, :half], values[:, half:])


def _as_sample(values, name: str) -> np.ndarray:
    """Per-episode values as float64: (N,) numbers, or (N, m) rows (one row per episode, for statistics such as
    :func:`pooled_ratio` that need several numbers of an episode)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (1, 2) or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-episode values (or an (N, m) array of one "
                         f"row per episode), got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop or fix those episodes first.")
    return values


def check_bootstrap(resamples: int, level: float) -> None:
    """Refuse bootstrap settings that give no interval: a resample count below 1, a level outside (0, 1)."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer (1000 is usual), got {resamples!r}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95 for a 95% interval, got {level!r}.")


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    # [q_{(1 - level)/2}, q_{(1 + level)/2}] of the bootstrap distribution (the percentile bootstrap, Efron 1979)
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_ci(values, statistic: Callable[[np.ndarray], float] = np.mean, resamples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): ``statistic`` of the per-episode ``values`` and its percentile-bootstrap interval.

    Each of ``resamples`` replicates draws len(values) episodes with replacement and recomputes the statistic; the
    interval holds the central ``level`` of the replicates. The estimate is the statistic of the whole sample. A fixed
    ``seed`` makes the interval reproducible. For RMSE, pass per-image MSEs with ``statistic=root_mean``; for a
    pooled ratio, (N, 2) rows with ``statistic=pooled_ratio`` (an episode's row is drawn whole).
    """
    values = _as_sample(values, "values")
    check_bootstrap(resamples, level)
    index = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))  # (R, N)
    replicates = np.array([statistic(values[row]) for row in index])  # (R,)
    return (float(statistic(values)), *_percentile_interval(replicates, level))


def paired_bootstrap_ci(values_a, values_b, statistic: Callable[[np.ndarray], float] = np.mean,
                        resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of the difference statistic(a) - statistic(b) between two methods scored on the *same*
    episodes (values_a[i] and values_b[i] come from episode i).

    Every replicate resamples episodes, and uses the same draw for both methods, so what the episodes share (an easy
    layout, a hard style) cancels: the interval is narrower than the one from two independent intervals. An interval
    that excludes 0 says the difference is not bootstrap noise at this ``level``.
    """
    values_a, values_b = _as_sample(values_a, "values_a"), _as_sample(values_b, "values_b")
    if len(values_a) != len(values_b):
        raise ValueError(f"values_a holds {len(values_a)} episodes but values_b {len(values_b)}; a paired interval "
                         "needs both methods scored on the same episodes, in the same order.")
    check_bootstrap(resamples, level)
    index = np.random.default_rng(seed).integers(0, len(values_a), size=(resamples, len(values_a)))  # (R, N)
    replicates = np.array([statistic(values_a[row]) - statistic(values_b[row]) for row in index])  # (R,)
    return (float(statistic(values_a) - statistic(values_b)), *_percentile_interval(replicates, level))


def format_ci(interval: tuple[float, float, float], digits: int = 3) -> str:
    """(estimate, low, high) -> "0.123 +- 0.012": the estimate and half the interval's width, as the tables show it.

    A percentile interval need not be symmetric; the half-width is its average reach (the JSON keeps low and high).
    """
    estimate, low, high = interval
    return f"{estimate:.{digits}f} +- {(high - low) / 2:.{digits}f}"

"""ShapesWorld layouts: where the shapes are, and the exact maps that follow from that.

A *layout* is 1-4 shapes, each with a class, a centre, a size and a rotation, listed back to front (the list order is
the depth order). Nothing about colour lives here: that is the *style* (``shapes_style.py``).

Every map is computed from one raster of the layout, ``Raster.ids`` (which shape is front-most at each pixel), so
the maps agree with each other and with the styled image exactly:

* ``edge``  (H, W) bool: the 1-pixel boundary of every visible shape region, on the front shape's side;
* ``seg``   (3, H, W): a fixed colour per shape class (``SEG_COLOURS``), black background;
* ``depth`` (3, H, W): a grey level by depth order, the front shape brightest (``depth_levels``), black background.

Two out-of-domain query maps imitate what people draw (never used in training):

* ``scribble``: thick white strokes along wobbly (domain-warped) outlines, on black, as in ControlNet's scribbles;
* ``sketch``: thin dark pencil strokes on white, wobbly and with gaps, like a quick hand-drawn outline.

Geometry uses unit coordinates: x to the right and y downwards, both in [0, 1] across the image, so one layout renders
at any resolution. Each shape is a signed distance function (SDF) in its own frame, scaled so that the shape fits in
the unit disc: negative inside, zero on the boundary. Masks are ``sdf <= 0``; strokes are ``|sdf| <= half width``.
Only a shape's bounding square is evaluated, which keeps rasterising a layout well under a millisecond.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Shape classes as signed distance functions of local coordinates (u, v), the shape's circumradius scaled to 1.
# Exact SDFs are not needed: the zero set must be the exact boundary, and |grad| ~ 1 near it so strokes have an even
# width. Max-norm boxes and half-plane intersections satisfy both and are cheaper than true Euclidean distances.
# ---------------------------------------------------------------------------------------------------------------------
_TRIANGLE_NORMALS = np.array([[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
_STAR_POINTS, _STAR_INNER = 5, 0.45


def _circle_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # d = |p| - r
    return np.hypot(u, v) - 0.85


def _square_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # d = max(|u|, |v|) - h: the max-norm distance to a box of half side h
    return np.maximum(np.abs(u), np.abs(v)) - 0.72


def _triangle_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # d = max_k (n_k . p) - a: intersection of three half-planes, apothem a = 1/2 puts the vertices on the unit circle
    n = _TRIANGLE_NORMALS
    return np.maximum(np.maximum(n[0, 0] * u + n[0, 1] * v, n[1, 0] * u + n[1, 1] * v), n[2, 0] * u + n[2, 1] * v) - 0.5


def _star_edge() -> tuple[float, float, float]:
    """The star's edge in its folded sector: outward unit normal (nx, ny) and offset c, so that d = n . p - c."""
    half = math.pi / _STAR_POINTS
    ax, ay = 1.0, 0.0  # outer vertex A on the x axis
    bx, by = _STAR_INNER * math.cos(half), _STAR_INNER * math.sin(half)  # inner vertex B at half the sector angle
    nx, ny = by - ay, ax - bx  # the edge direction B - A turned by -90 degrees points away from the centre
    norm = math.hypot(nx, ny)
    return nx / norm, ny / norm, (nx * ax + ny * ay) / norm


_STAR_NX, _STAR_NY, _STAR_C = _star_edge()


def _star_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Fold every point into the wedge 0 <= phi <= pi/n between an outer and an inner vertex; there the star is the
    # triangle (centre, A, B), so d = n . p - c for the edge AB.  phi' = |((theta + s/2) mod s) - s/2|, s = 2 pi / n
    sector = 2 * math.pi / _STAR_POINTS
    phi = np.abs(np.mod(np.arctan2(v, u) + sector / 2, sector) - sector / 2)
    rho = np.hypot(u, v)
    return _STAR_NX * rho * np.cos(phi) + _STAR_NY * rho * np.sin(phi) - _STAR_C


def _ring_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # d = | |p| - r_mid | - t: an annulus of mid radius r_mid and half thickness t (inner radius 0.5, outer 0.9)
    return np.abs(np.hypot(u, v) - 0.7) - 0.2


def _cross_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # A plus sign has 8-fold symmetry: fold to x' = max(|u|, |v|) >= y' = min(|u|, |v|), where it is one arm,
    # a box of half length 0.85 and half width 0.3: d = max(x' - 0.85, y' - 0.3)
    au, av = np.abs(u), np.abs(v)
    return np.maximum(np.maximum(au, av) - 0.85, np.minimum(au, av) - 0.3)


SHAPE_SDFS = {"circle": _circle_sdf, "square": _square_sdf, "triangle": _triangle_sdf, "star": _star_sdf,
              "ring": _ring_sdf, "cross": _cross_sdf}
SHAPE_CLASSES: tuple[str, ...] = tuple(SHAPE_SDFS)
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                 "ring": "rings", "cross": "crosses"}

# Segmentation colours, one per class (background black), chosen far apart so a class is never ambiguous.
SEG_COLOURS = {"circle": (0.90, 0.10, 0.10), "square": (0.10, 0.80, 0.10), "triangle": (0.15, 0.25, 1.00),
               "star": (1.00, 0.90, 0.00), "ring": (0.00, 0.90, 0.90), "cross": (0.90, 0.00, 0.90)}
_SEG_PALETTE = np.array([(0.0, 0.0, 0.0), *(SEG_COLOURS[c] for c in SHAPE_CLASSES)], dtype=np.float32).T  # (3, C + 1)


@dataclass(frozen=True)
class LayoutConfig:
    """How layouts are drawn. Sizes are circumradii in image widths; at 64 px, 0.13-0.21 is a radius of 8-13 px."""

    min_shapes: int = 1
    max_shapes: int = 4
    min_size: float = 0.13
    max_size: float = 0.21
    # Two shapes' centres stay at least this many (r_i + r_j) apart, so overlaps are partial and depth order shows.
    min_centre_gap: float = 0.8
    # Every shape keeps at least this fraction of its own area visible; otherwise the layout is redrawn.
    min_visible_fraction: float = 0.35
    # Depth map: the front shape is 1.0 and each shape further back is this much darker.
    depth_step: float = 0.2
    # Scribble and sketch strokes, in pixels at 64 px (they scale with the image size).
    scribble_width: float = 3.0
    sketch_width: float = 1.7  # thinner strokes break up into dots at 64 px (no anti-aliasing)
    wobble: float = 1.2  # amplitude of the hand-drawn wobble


@dataclass(frozen=True)
class Shape:
    """One shape: ``cls`` in SHAPE_CLASSES, centre (x, y) and ``size`` (circumradius) in image widths, rotation in
    radians."""

    cls: str
    x: float
    y: float
    size: float
    rotation: float

    def __post_init__(self) -> None:
        if self.cls not in SHAPE_SDFS:
            raise ValueError(f"unknown shape class {self.cls!r}; choose one of {SHAPE_CLASSES}.")


@dataclass(frozen=True)
class Layout:
    """1-4 shapes listed back to front: ``shapes[-1]`` is nearest the viewer. ``seed`` is the layout seed it was drawn
    from (it also seeds the wobble of the scribble and sketch maps)."""

    shapes: tuple[Shape, ...]
    seed: int = 0

    @property
    def classes(self) -> tuple[str, ...]:
        """The distinct classes in the layout, in SHAPE_CLASSES order."""
        present = {s.cls for s in self.shapes}
        return tuple(c for c in SHAPE_CLASSES if c in present)


@dataclass(frozen=True)
class Raster:
    """A layout rasterised at one size; every map and the styled image are read off these arrays.

    ids:     (H, W) int8, -1 on the background, else the index (into ``layout.shapes``) of the front-most shape
    classes: (H, W) int8, -1 on the background, else the SHAPE_CLASSES index of that shape
    edge:    (H, W) bool, the boundary pixels of every visible shape region (on the front shape's side)
    visible: (n_shapes,) int, visible pixels per shape; area: (n_shapes,) int, pixels each shape covers on its own
    """

    ids: np.ndarray
    classes: np.ndarray
    edge: np.ndarray
    visible: np.ndarray
    area: np.ndarray


@lru_cache(maxsize=8)
def pixel_centres(size: int) -> np.ndarray:
    """(size,) unit coordinates of the pixel centres, (j + 1/2) / size; shared by rows (y) and columns (x)."""
    return ((np.arange(size) + 0.5) / size).astype(np.float32)


def _local_frame(shape: Shape, size: int, margin: float = 0.0):
    """The shape's bounding square (grown by ``margin`` image widths) as row/column slices, and the local (u, v)
    coordinates of its pixels: centred, rotated by -rotation and scaled so the circumradius is 1. (h, w) each."""
    reach = shape.size + margin
    r0, r1 = max(0, int((shape.y - reach) * size)), min(size, int(math.ceil((shape.y + reach) * size)))
    c0, c1 = max(0, int((shape.x - reach) * size)), min(size, int(math.ceil((shape.x + reach) * size)))
    grid = pixel_centres(size)
    dx = (grid[c0:c1] - shape.x)[None, :] / shape.size  # (1, w)
    dy = (grid[r0:r1] - shape.y)[:, None] / shape.size  # (h, 1)
    cos, sin = math.cos(shape.rotation), math.sin(shape.rotation)
    # [u, v] = R(-rotation) [dx, dy]; broadcasting (1, w) with (h, 1) gives (h, w)
    u = cos * dx + sin * dy
    v = cos * dy - sin * dx
    return (slice(r0, r1), slice(c0, c1)), u, v


def rasterize(layout: Layout, size: int) -> Raster:
    """Paint the shapes back to front into an id map, then read off classes, edges and visibility. Exact: no
    anti-aliasing, so every map agrees pixel for pixel."""
    n = len(layout.shapes)
    ids = np.full((size, size), -1, dtype=np.int8)
    area = np.zeros(n, dtype=np.int64)
    for i, shape in enumerate(layout.shapes):
        box, u, v = _local_frame(shape, size)
        inside = SHAPE_SDFS[shape.cls](u, v) <= 0  # (h, w) bool
        ids[box][inside] = i  # later shapes overwrite earlier ones: they are in front
        area[i] = inside.sum()
    class_of_id = np.array([-1, *(SHAPE_CLASSES.index(s.cls) for s in layout.shapes)], dtype=np.int8)
    classes = class_of_id[ids + 1]  # (H, W) ids -> (H, W) class indices
    visible = np.bincount(ids.ravel() + 1, minlength=n + 1)[1:]
    return Raster(ids=ids, classes=classes, edge=boundary(ids), visible=visible, area=area)


def boundary(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of a *smaller* id (further back, or background -1).

    Marking only the front side of each boundary keeps edges one pixel thin, and the back shape's outline still shows
    wherever it meets the background.
    """
    edge = np.zeros(ids.shape, dtype=bool)
    left, right = ids[:, :-1], ids[:, 1:]
    edge[:, :-1] |= left > right
    edge[:, 1:] |= right > left
    up, down = ids[:-1, :], ids[1:, :]
    edge[:-1, :] |= up > down
    edge[1:, :] |= down > up
    return edge


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) -> (3, H, W) float32, the same grey in every channel."""
    return np.repeat(gray.astype(np.float32, copy=False)[None], 3, axis=0)  # (H, W) -> (3, H, W)


def edge_map(raster: Raster) -> np.ndarray:
    """(3, H, W) white 1-pixel boundaries on black."""
    return gray_to_rgb(raster.edge)


def seg_map(raster: Raster) -> np.ndarray:
    """(3, H, W) the fixed SEG_COLOURS of each visible class on black."""
    return _SEG_PALETTE[:, raster.classes.astype(np.int64) + 1]  # (3, C + 1) indexed by (H, W) -> (3, H, W)


def depth_levels(n_shapes: int, config: LayoutConfig = LayoutConfig()) -> np.ndarray:
    """(n_shapes + 1,) grey levels: background 0, then back to front, the front shape 1.0 and each one behind it
    ``depth_step`` darker (so "brighter = nearer", as in monocular depth maps)."""
    # level_i = 1 - step * (n - 1 - i) for shape i (i = n - 1 is the front)
    return np.array([0.0, *(1.0 - config.depth_step * (n_shapes - 1 - i) for i in range(n_shapes))], dtype=np.float32)


def depth_map(raster: Raster, config: LayoutConfig = LayoutConfig()) -> np.ndarray:
    """(3, H, W) each visible shape at its depth level (``depth_levels``) on black."""
    levels = depth_levels(len(raster.area), config)
    return gray_to_rgb(levels[raster.ids.astype(np.int64) + 1])  # (n + 1,) indexed by (H, W) -> (H, W)


# ---------------------------------------------------------------------------------------------------------------------
# Hand-drawn query maps (out of domain). The wobble is a smooth random displacement of the coordinates, a sum of a few
# low-frequency sinusoids: evaluating an SDF at p + wobble(p) bends its outline like an unsteady hand.
# ---------------------------------------------------------------------------------------------------------------------
def _wobble(rng: random.Random, size: int, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Two (H, W) displacement fields (in image widths) with ~``amplitude`` image widths of smooth wobble."""
    grid = pixel_centres(size)
    fields = []
    for _ in range(2):
        field = np.zeros((size, size), dtype=np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(-3, 3) * 2 * math.pi, rng.uniform(-3, 3) * 2 * math.pi  # <= 3 cycles per image
            # w(x, y) += a sin(f_x x + f_y y + phase), with a split over the 3 terms
            field += np.sin(fx * grid[None, :] + fy * grid[:, None] + rng.uniform(0, 2 * math.pi)) * (amplitude / 2)
        fields.append(field)
    return fields[0], fields[1]


def _strokes(layout: Layout, raster: Raster, size: int, width_px: float, wobble_px: float, salt: int,
             gaps: bool) -> np.ndarray:
    """(H, W) bool: a stroke of ``width_px`` along each shape's wobbly outline, hidden where a shape in front covers
    it. With ``gaps``, each outline also loses a few arcs, as in a quick sketch."""
    rng = random.Random(layout.seed * 1_000_003 + salt)
    wob_x, wob_y = _wobble(rng, size, wobble_px / 64)
    half_width = width_px / 64 / 2
    ink = np.zeros((size, size), dtype=bool)
    for i, shape in enumerate(layout.shapes):
        box, u, v = _local_frame(shape, size, margin=(width_px + 2 * wobble_px) / 64)
        cos, sin = math.cos(shape.rotation), math.sin(shape.rotation)
        # the wobble is a displacement in image coordinates; rotate it into the shape's frame and scale like (u, v)
        du, dv = (cos * wob_x[box] + sin * wob_y[box]) / shape.size, (cos * wob_y[box] - sin * wob_x[box]) / shape.size
        stroke = np.abs(SHAPE_SDFS[shape.cls](u + du, v + dv)) * shape.size <= half_width  # (h, w) bool
        if gaps:
            # keep the outline where sin(g theta + phase) > -0.8: g gaps around the shape's centre, ~20 % missing
            g = rng.choice((1, 2, 3))
            stroke &= np.sin(g * np.arctan2(v, u) + rng.uniform(0, 2 * math.pi)) > -0.8
        stroke &= raster.ids[box] <= i  # a shape in front hides this outline
        ink[box] |= stroke
    return ink


def scribble_map(layout: Layout, raster: Raster, size: int, config: LayoutConfig = LayoutConfig()) -> np.ndarray:
    """(3, H, W) thick white wobbly strokes on black (ControlNet-style scribbles)."""
    return gray_to_rgb(_strokes(layout, raster, size, config.scribble_width, config.wobble, salt=1, gaps=False))


def sketch_map(layout: Layout, raster: Raster, size: int, config: LayoutConfig = LayoutConfig()) -> np.ndarray:
    """(3, H, W) thin dark wobbly pencil strokes with gaps on white paper."""
    ink = _strokes(layout, raster, size, config.sketch_width, config.wobble, salt=2, gaps=True)
    # paper 1.0, pencil 0.15
    return gray_to_rgb(np.where(ink, 0.15, 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Drawing a random layout
# ---------------------------------------------------------------------------------------------------------------------
def _place(rng: random.Random, classes: list[str], config: LayoutConfig) -> list[Shape] | None:
    """Place ``classes`` one by one at random, keeping centres ``min_centre_gap`` (r_i + r_j) apart; None if a shape
    finds no room in 50 tries."""
    shapes: list[Shape] = []
    for cls in classes:
        size = rng.uniform(config.min_size, config.max_size)
        for _ in range(50):
            x, y = rng.uniform(size, 1 - size), rng.uniform(size, 1 - size)  # the whole shape stays in the image
            if all(math.hypot(x - s.x, y - s.y) >= config.min_centre_gap * (size + s.size) for s in shapes):
                shapes.append(Shape(cls, x, y, size, rng.uniform(0, 2 * math.pi)))
                break
        else:
            return None
    return shapes


def sample_layout(seed: int, size: int, required: tuple[str, ...] = (),
                  config: LayoutConfig = LayoutConfig()) -> tuple[Layout, Raster]:
    """Draw a layout from ``seed`` that contains every class in ``required`` (plus random others), and its raster.

    The number of shapes is uniform in [max(min_shapes, len(required)), max_shapes]; classes are shuffled into a
    random depth order. Layouts where a shape would be mostly hidden are redrawn, so every shape in the layout is
    visible (``min_visible_fraction``) in its raster at ``size``.
    """
    if len(required) > config.max_shapes:
        raise ValueError(f"a layout holds at most {config.max_shapes} shapes, but {len(required)} classes "
                         f"are required: {required}.")
    rng = random.Random(seed)
    while True:
        n = rng.randint(max(config.min_shapes, len(required)), config.max_shapes)
        classes = list(required) + [rng.choice(SHAPE_CLASSES) for _ in range(n - len(required))]
        rng.shuffle(classes)
        shapes = _place(rng, classes, config)
        if shapes is None:
            continue
        layout = Layout(tuple(shapes), seed)
        raster = rasterize(layout, size)
        if np.all(raster.visible >= config.min_visible_fraction * raster.area):
            return layout, raster

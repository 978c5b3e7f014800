"""ShapesWorld styles: how a layout is painted, how a style is put into words, and which pairings the test split holds
out.

A *style* is a background (a pattern, a colour and, for stripes and gradients, an angle), one fill colour and one
fill texture per shape class, and an outline colour. Within a style the six class colours and the background colour
are all different, so every shape stands out and a class's colour can be read off any image that shows it.

Held-out pairings make the test split new in a controlled way (the paper's held-out evaluation): some (class, colour)
pairs, e.g. blue circles, and some (colour, texture) pairs, e.g. yellow with stripes, never occur in a training style,
and every test style contains at least one of them. ``sample_style`` enforces both rules.
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import numpy as np

from .shapes_layout import SHAPE_CLASSES, SHAPE_PLURALS, Raster, pixel_centres

COLOURS = {
    "red": (0.86, 0.12, 0.12), "orange": (1.00, 0.55, 0.00), "yellow": (0.98, 0.84, 0.08),
    "green": (0.15, 0.62, 0.18), "teal": (0.00, 0.58, 0.58), "blue": (0.12, 0.28, 0.90),
    "purple": (0.52, 0.18, 0.74), "pink": (1.00, 0.45, 0.72), "brown": (0.52, 0.30, 0.12),
    "grey": (0.50, 0.50, 0.50),
}
TEXTURES: tuple[str, ...] = ("flat", "stripes", "dots")
BACKGROUNDS: tuple[str, ...] = ("solid", "stripes", "checker", "gradient")
BACKGROUND_ANGLES: tuple[int, ...] = (0, 45, 90, 135)  # degrees; few enough to cache every background image
OUTLINES = {"none": None, "black": (0.05, 0.05, 0.05), "white": (1.0, 1.0, 1.0)}

HELD_OUT_CLASS_COLOURS = frozenset({("circle", "blue"), ("square", "red"), ("triangle", "green"),
                                    ("star", "purple"), ("ring", "orange"), ("cross", "teal")})
HELD_OUT_COLOUR_TEXTURES = frozenset({("yellow", "stripes"), ("pink", "dots"), ("brown", "stripes")})

# Backgrounds are pale tints of their colour so saturated shapes stand out on them: tint = c + t (1 - c).
BACKGROUND_TINT, BACKGROUND_ACCENT_TINT = 0.45, 0.75
# Textures darken the fill: accent = shade * c.
TEXTURE_SHADE = 0.55
# Pattern periods in pixels at 64 px (they scale with the image size).
BACKGROUND_STRIPE_PERIOD, CHECKER_PERIOD, FILL_STRIPE_PERIOD, DOT_PERIOD, DOT_RADIUS = 12.0, 16.0, 6.0, 6.0, 1.5

_TEXTURE_WORDS = {"flat": "", "stripes": " with stripes", "dots": " with dots"}
_BACKGROUND_WORDS = {"solid": "plain {}", "stripes": "{} striped", "checker": "{} checkered", "gradient": "{} gradient"}


@dataclass(frozen=True)
class Style:
    """How to paint a layout.

    background: one of BACKGROUNDS; background_colour: a COLOURS name; background_angle: one of BACKGROUND_ANGLES
    (direction of stripes and gradients); fills: one (colour, texture) per class, in SHAPE_CLASSES order;
    outline: a key of OUTLINES.
    """

    background: str
    background_colour: str
    background_angle: int
    fills: tuple[tuple[str, str], ...]
    outline: str

    def fill(self, cls: str) -> tuple[str, str]:
        """(colour, texture) of shape class ``cls``."""
        return self.fills[SHAPE_CLASSES.index(cls)]

    def held_out_pairings(self) -> list[tuple[str, str]]:
        """The held-out pairings this style uses: (class, colour) and (colour, texture) tuples."""
        found = []
        for cls, (colour, texture) in zip(SHAPE_CLASSES, self.fills):
            found += [p for p in ((cls, colour), (colour, texture))
                      if p in HELD_OUT_CLASS_COLOURS or p in HELD_OUT_COLOUR_TEXTURES]
        return found

    def held_out_classes(self) -> tuple[str, ...]:
        """The classes painted with a held-out pairing (in SHAPE_CLASSES order)."""
        return tuple(cls for cls, (colour, texture) in zip(SHAPE_CLASSES, self.fills)
                     if (cls, colour) in HELD_OUT_CLASS_COLOURS or (colour, texture) in HELD_OUT_COLOUR_TEXTURES)

    def describe(self, classes: tuple[str, ...] | list[str]) -> str:
        """The style in words, for the given classes, e.g.
        "red circles and teal squares with dots on a yellow checkered background, outlined in black"."""
        parts = []
        for cls in SHAPE_CLASSES:
            if cls in classes:
                colour, texture = self.fill(cls)
                parts.append(f"{colour} {SHAPE_PLURALS[cls]}{_TEXTURE_WORDS[texture]}")
        shapes = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        background = _BACKGROUND_WORDS[self.background].format(self.background_colour)
        article = "an" if background[0] in "aeiou" else "a"
        text = f"{shapes} on {article} {background} background"
        return text if self.outline == "none" else f"{text}, outlined in {self.outline}"


def sample_style(rng: random.Random, split: str) -> Style:
    """Draw a style for ``split``: "train" styles use no held-out pairing; "test" styles use at least one.

    Class colours are distinct and drawn class by class; in train, each draw skips the held-out colour of its class
    and each texture draw skips textures held out for the chosen colour. Test styles are drawn without those limits
    and redrawn until they contain a held-out pairing (about 70 % of them do at the first draw).
    """
    train = split == "train"
    while True:
        free = list(COLOURS)
        fills = []
        for cls in SHAPE_CLASSES:
            colour = rng.choice([c for c in free if not (train and (cls, c) in HELD_OUT_CLASS_COLOURS)])
            free.remove(colour)
            texture = rng.choice([t for t in TEXTURES if not (train and (colour, t) in HELD_OUT_COLOUR_TEXTURES)])
            fills.append((colour, texture))
        style = Style(background=rng.choice(BACKGROUNDS), background_colour=rng.choice(free),
                      background_angle=rng.choice(BACKGROUND_ANGLES), fills=tuple(fills),
                      outline=rng.choice(tuple(OUTLINES)))
        if train or style.held_out_pairings():
            return style


def binding_twin(style: Style, classes: tuple[str, ...] | list[str], rng: random.Random, split: str) -> Style | None:
    """The binding twin of ``style``: the same colours and textures, bound to the shown ``classes`` differently.

    Either two shown classes trade their fills (colour and texture), or one shown class trades its colour with the
    background. The twin's prompt has exactly the same words in another binding ("red circles and teal squares with
    dots on a yellow background" -> "teal circles with dots and red squares on a yellow background", or "red circles
    on a blue background" -> "blue circles on a red background"), so only an encoder that keeps which colour belongs
    to which shape can tell the two apart (the hard negatives of NegCLIP, Yuksekgonul et al. 2023, here painted as
    well as worded). Only twins that ``split`` could draw itself are allowed (train twins never show a held-out
    pairing, test twins keep one); ``rng`` picks among them. Returns None when every candidate breaks that rule.
    """
    shown = [SHAPE_CLASSES.index(cls) for cls in SHAPE_CLASSES if cls in classes]
    candidates = []
    for i, a in enumerate(shown):
        colour, texture = style.fills[a]
        fills = list(style.fills)
        fills[a] = (style.background_colour, texture)  # class a <-> background: colours only
        candidates.append(dataclasses.replace(style, fills=tuple(fills), background_colour=colour))
        for b in shown[i + 1:]:
            fills = list(style.fills)
            fills[a], fills[b] = fills[b], fills[a]  # class a <-> class b: whole fills
            candidates.append(dataclasses.replace(style, fills=tuple(fills)))
    allowed = [twin for twin in candidates if bool(twin.held_out_pairings()) == (split != "train")]
    return rng.choice(allowed) if allowed else None


def _mix(colour: tuple[float, float, float], t: float) -> np.ndarray:
    """(3, 1, 1) float32: ``colour`` moved a fraction t towards white, c + t (1 - c)."""
    c = np.asarray(colour, dtype=np.float32)
    return (c + t * (1 - c))[:, None, None]


class StylePainter:
    """Paints rasters in a style at one image size, with the patterns cached.

    Backgrounds (pattern x colour x angle, at most 4 x 10 x 4) and textured fills (colour x texture, 10 x 3) are
    built once on first use and kept as (3, H, W) float32 images, so painting is a copy plus one masked copy per
    class. At 64 px the full cache is ~8 MB.
    """

    def __init__(self, size: int):
        self.size = size
        grid = pixel_centres(size)
        self._x, self._y = grid[None, :], grid[:, None]  # (1, W) and (H, 1): broadcast to (H, W)
        self._px = 1.0 / 64  # one pixel at 64 px, in image widths: pattern sizes are defined at 64 px
        self._backgrounds: dict[tuple[str, str, int], np.ndarray] = {}
        self._fills: dict[tuple[str, str], np.ndarray] = {}

    def _along(self, angle_deg: int) -> np.ndarray:
        """(H, W) coordinate along the direction ``angle_deg`` (0 = left to right, 90 = top to bottom)."""
        a = math.radians(angle_deg)
        return math.cos(a) * self._x + math.sin(a) * self._y

    def background(self, kind: str, colour: str, angle: int) -> np.ndarray:
        """(3, H, W) a background image (cached)."""
        key = (kind, colour, angle)
        if key not in self._backgrounds:
            base, accent = _mix(COLOURS[colour], BACKGROUND_TINT), _mix(COLOURS[colour], BACKGROUND_ACCENT_TINT)
            if kind == "solid":
                t = np.zeros((self.size, self.size), dtype=np.float32)
            elif kind == "stripes":
                # stripes across direction a: accent where the coordinate along a, in periods, has fraction >= 1/2
                t = (np.mod(self._along(angle) / (BACKGROUND_STRIPE_PERIOD * self._px), 1.0) >= 0.5)
            elif kind == "checker":
                cell = CHECKER_PERIOD / 2 * self._px
                cells = np.floor(self._x / cell) + np.floor(self._y / cell)  # (1, W) + (H, 1) -> (H, W)
                t = np.mod(cells, 2) == 1  # (H, W): alternating cells
            elif kind == "gradient":
                # a linear ramp from base to accent along direction a, normalised to [0, 1] over the image
                along = self._along(angle) + np.zeros((self.size, self.size), dtype=np.float32)
                t = (along - along.min()) / (along.max() - along.min())
            else:
                raise ValueError(f"unknown background {kind!r}; choose one of {BACKGROUNDS}.")
            t = np.asarray(t, dtype=np.float32)
            # image = (1 - t) base + t accent
            self._backgrounds[key] = (1 - t) * base + t * accent  # (H, W) with (3, 1, 1) -> (3, H, W)
        return self._backgrounds[key]

    def fill(self, colour: str, texture: str) -> np.ndarray:
        """(3, H, W) a whole image of a textured fill (cached); shapes cut their pixels out of it."""
        key = (colour, texture)
        if key not in self._fills:
            base = np.asarray(COLOURS[colour], dtype=np.float32)[:, None, None]
            if texture == "flat":
                accent = np.zeros((self.size, self.size), dtype=bool)
            elif texture == "stripes":
                accent = np.mod(self._along(45) / (FILL_STRIPE_PERIOD * self._px), 1.0) >= 0.5  # diagonal stripes
            elif texture == "dots":
                # distance to the nearest point of a square lattice of dot centres, below the dot radius
                period = DOT_PERIOD * self._px
                dx, dy = np.mod(self._x, period) - period / 2, np.mod(self._y, period) - period / 2
                accent = np.hypot(dx, dy) <= DOT_RADIUS * self._px
            else:
                raise ValueError(f"unknown texture {texture!r}; choose one of {TEXTURES}.")
            self._fills[key] = np.where(accent, TEXTURE_SHADE * base, base).astype(np.float32)  # (3, H, W)
        return self._fills[key]

    def paint(self, raster: Raster, style: Style) -> np.ndarray:
        """(3, H, W) float32 in [0, 1]: the background, then every visible class in its fill, then the outline (the
        raster's edge pixels, so outlines coincide with the edge map)."""
        image = self.background(style.background, style.background_colour, style.background_angle).copy()
        for c in np.unique(raster.classes):
            if c >= 0:
                inside = raster.classes == c  # (H, W) bool
                image[:, inside] = self.fill(*style.fills[c])[:, inside]
        colour = OUTLINES[style.outline]
        if colour is not None:
            image[:, raster.edge] = np.asarray(colour, dtype=np.float32)[:, None]
        return image

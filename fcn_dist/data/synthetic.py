"""Procedural segmentation data: shapes with border bands on textured backgrounds.

Each image holds 1-3 filled shapes (ellipse, rotated rectangle, triangle) on a textured
background. Every shape has a border band (an outline of width 1/8 of the image side (at least 4 px), centred on
the edge) labelled as its own class, like the Pets trimap border. Appearance cues are clear but
not trivial: backgrounds are desaturated and textured (low-frequency blotches + stripes + noise),
shapes are saturated and mildly textured, bands are dark; shapes can overlap (later ones on top).

Classes: ``background, shape, border`` (3), or with ``shape_classes=True``
``background, ellipse, rectangle, triangle, border`` (5). No ignore pixels (ignore index 255).

Deterministic: sample ``i`` of a dataset with seed ``s`` depends only on ``(s, i, size)``.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ellipse", "rectangle", "triangle")
CLASSES = ["background", "shape", "border"]
CLASSES_BY_SHAPE = ["background", "ellipse", "rectangle", "triangle", "border"]
PALETTE = [[0, 0, 0], [220, 20, 60], [255, 255, 255]]
PALETTE_BY_SHAPE = [[0, 0, 0], [220, 20, 60], [30, 144, 255], [50, 205, 50], [255, 255, 255]]


def classes(shape_classes: bool = False) -> tuple[list[str], list[list[int]]]:
    """Class names and palette of the synthetic dataset."""
    return (list(CLASSES_BY_SHAPE), [list(c) for c in PALETTE_BY_SHAPE]) if shape_classes else (
        list(CLASSES),
        [list(c) for c in PALETTE],
    )


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _blotches(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    im = Image.fromarray(((grid + 1) * 127.5).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 127.5 - 1.0


def _polygon(kind: str, cy: float, cx: float, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    angle = rng.uniform(0, math.pi)
    if kind == "ellipse":
        a, b = r, r * rng.uniform(0.6, 1.0)
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = [(a * math.cos(t), b * math.sin(t)) for t in ts]
    elif kind == "rectangle":
        a, b = r, r * rng.uniform(0.55, 1.0)
        pts = [(-a, -b), (a, -b), (a, b), (-a, b)]
    else:  # triangle: jittered equilateral
        pts = []
        for k in range(3):
            t = 2 * math.pi * k / 3 + rng.uniform(-0.25, 0.25)
            rr = r * rng.uniform(0.9, 1.15)
            pts.append((rr * math.cos(t), rr * math.sin(t)))
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def generate(index: int, seed: int = 0, size: tuple[int, int] = (64, 64), shape_classes: bool = False):
    """One sample: ``(image uint8 (H, W, 3), label uint8 (H, W))``, deterministic in
    ``(seed, index, size)``."""
    h, w = size
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), h, w])
    side = min(h, w)
    band = max(4, round(side * 0.125))  # one 1/8-stride cell: learnable by FCN-8s
    border_class = 4 if shape_classes else 2

    # background: desaturated base colour, blotches, stripes, pixel noise
    base = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.45, 0.85))
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img += _blotches(rng, h, w, int(rng.integers(3, 7)))[..., None] * rng.uniform(10, 30)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 16)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    img += stripes[..., None] * rng.uniform(0, 15)
    img += rng.normal(0, 6, size=(h, w, 3)).astype(np.float32)

    label = np.zeros((h, w), dtype=np.uint8)
    n = int(rng.integers(1, 4))
    for _ in range(n):
        k = int(rng.integers(0, len(SHAPES)))
        r = rng.uniform(0.2, 0.34) * side
        cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
        pts = _polygon(SHAPES[k], cy, cx, r, rng)
        fill = Image.new("L", (w, h), 0)
        edge = Image.new("L", (w, h), 0)
        ImageDraw.Draw(fill).polygon(pts, fill=1)
        ImageDraw.Draw(edge).line(pts + [pts[0]], fill=1, width=band, joint="curve")
        fill_m = np.asarray(fill, dtype=bool)
        edge_m = np.asarray(edge, dtype=bool)
        inner = fill_m & ~edge_m
        colour = _hsv(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
        tex = _blotches(rng, h, w, 4)[..., None] * 12 + rng.normal(0, 5, size=(h, w, 3)).astype(np.float32)
        img[inner] = (colour + tex)[inner]
        dark = _hsv(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.02, 0.15))
        img[edge_m] = (dark + rng.normal(0, 6, size=(h, w, 3)).astype(np.float32))[edge_m]
        label[inner] = 1 + k if shape_classes else 1
        label[edge_m] = border_class
    return np.clip(img, 0, 255).astype(np.uint8), label

"""The paper under a straight shadow: a plane of light with one soft step along a straight edge.

A hand, a phone or a ruler held over the page casts a shadow whose edge is a straight (or nearly
straight) line with a soft fall-off. A morphological closing (:func:`mnist_cnn.preprocess._local_paper`)
follows any shadow, but where the shadow's edge meets the border at an acute angle the shadow is a
wedge narrower than the closing's element, and the wedge's tip is read as ink. Modelling the edge
instead keeps the whole shadow as paper:

    paper(y, x) = a + b x + c y + step * Phi((n . (x, y) - offset) / softness)

fitted by least squares to the pixels known to be paper, over a grid of edge directions, offsets
and softnesses (every candidate solved at once from its 4x4 normal equations).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from .decode import downscale
from .strokes import median, reduce_mask

FIT_SIDE = 48  # the search runs on a copy this size
COARSE = (24, 16, (0.5, 1.5))  # first pass: edge directions over half a turn, positions across, fall-offs (px)
FINE = (5, 5, (0.3, 0.6, 1.0, 1.5, 2.5))  # second pass: around the best edge of the first


def least_squares(basis: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Coefficients of the least-squares fit ``basis @ coef ~ z`` for a few well-scaled columns, from the
    normal equations: a tenth of the time of ``np.linalg.lstsq`` (an SVD) on an image's 10,000 pixels."""
    gram = basis.T @ basis
    gram[np.diag_indices_from(gram)] += 1e-9
    return np.linalg.solve(gram, basis.T @ z)


def _coordinates(h: int, w: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres of an (h, w) image, from its centre, in units of the search copy's pixels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return (yy + 0.5 - h / 2) * scale, (xx + 0.5 - w / 2) * scale


def _grid(angles: np.ndarray, offsets: np.ndarray, softness) -> np.ndarray:
    """Every (angle, offset, softness) combination: (K, 3)."""
    return np.stack(np.meshgrid(angles, offsets, softness, indexing="ij"), -1).reshape(-1, 3)


def _coarse(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    angles, offsets, softness = COARSE
    reach = float(np.hypot(yy.max(), xx.max()))  # a shadow on the other side of an edge is a negative step
    return _grid(np.linspace(0, np.pi, angles, endpoint=False), np.linspace(-reach, reach, offsets), softness)


def _fine(edge: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    angles, offsets, softness = FINE
    da, do = np.pi / COARSE[0], 2 * float(np.hypot(yy.max(), xx.max())) / (COARSE[1] - 1)
    return _grid(edge[0] + np.linspace(-da, da, angles), edge[1] + np.linspace(-do, do, offsets), softness)


def _steps(yy: np.ndarray, xx: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The soft step of each edge (K, 3) at the given pixels: (pixels, K); the shadow is where the step is 1."""
    angle, offset, soft = edges[:, 0], edges[:, 1], edges[:, 2]
    t = np.cos(angle) * xx[:, None] + np.sin(angle) * yy[:, None]
    return ndtr((t - offset) / soft)


def _best_edge(
    z: np.ndarray, yy: np.ndarray, xx: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The edge whose model fits ``z`` best: (edge, coefficients (a, b, c, step), residual sum of squares)."""
    base = np.stack([np.ones_like(xx), xx, yy], 1)  # (n, 3)
    steps = _steps(yy, xx, edges)  # (n, K)
    k = steps.shape[1]
    gram = np.empty((k, 4, 4))
    gram[:, :3, :3] = base.T @ base
    gram[:, :3, 3] = gram[:, 3, :3] = (base.T @ steps).T
    gram[:, 3, 3] = (steps * steps).sum(0) + 1e-9
    rhs = np.empty((k, 4))
    rhs[:, :3] = base.T @ z
    rhs[:, 3] = steps.T @ z
    coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
    sse = float(z @ z) - (coef * rhs).sum(1)
    best = int(np.argmin(sse))
    return edges[best], coef[best], float(sse[best])


def _model(yy: np.ndarray, xx: np.ndarray, edge: np.ndarray, coef: np.ndarray) -> np.ndarray:
    step = _steps(yy.ravel(), xx.ravel(), edge[None])[:, 0].reshape(yy.shape)
    return coef[0] + coef[1] * xx + coef[2] * yy + coef[3] * step


def straight_shadow(grey: np.ndarray, paper: np.ndarray) -> np.ndarray | None:
    """The paper's surface (float32, like ``grey``) as a plane with one straight soft-edged shadow, fitted
    to the pixels where ``paper`` (bool, like ``grey``) is True; None when no edge improves on a plane
    by much (the light changes some other way) or too little paper is known.
    """
    small, _ = downscale(grey, FIT_SIDE)
    known = reduce_mask(paper, small.shape)
    if known.sum() < 0.2 * known.size:
        return None
    yy, xx = _coordinates(*small.shape, 1.0)
    z, ys, xs = small[known].astype(np.float64), yy[known], xx[known]
    edge, coef, _ = _best_edge(z, ys, xs, _coarse(yy, xx))
    resid = z - _model(ys, xs, edge, coef)
    keep = np.abs(resid) < 3 * max(1.4826 * float(median(np.abs(resid))), 0.005)  # ink the mask missed
    z, ys, xs = z[keep], ys[keep], xs[keep]
    edge, coef, sse = _best_edge(z, ys, xs, _fine(edge, yy, xx))
    base = np.stack([np.ones_like(xs), xs, ys], 1)
    plane = least_squares(base, z)
    if sse > 0.25 * float(((base @ plane - z) ** 2).sum()):
        return None
    fy, fx = _coordinates(*grey.shape, small.shape[0] / grey.shape[0])
    return _model(fy, fx, edge, coef).astype(np.float32)

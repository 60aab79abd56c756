"""Augmented views of an axial slice: rotations about the slice centre, then random shifts, a
random zoom and intensity jitter (gain, offset, noise in HU, before windowing) of every view but
the original.

View index ``a`` enumerates (rotation r in [0] + angles) x (translation t in 0..translations):

    a = r * (1 + translations) + t          view 0 = (no rotation, no shift) = the original

Translated copies (t >= 1) get a shift (dy, dx) drawn uniformly in [-max_shift, max_shift] per
slice and per copy; t = 0 is unshifted. Every view but view 0 is zoomed about the slice centre by a
factor drawn log-uniformly in [1 / (1 + zoom), 1 + zoom] per (slice, view) (zoom 0: none), and
mirrored left-right (about the centre column) with probability ``flip``. Image and mask go through
the SAME affine map: the image
bilinearly, the mask nearest-neighbour, zero outside the slice. An identity map is not resampled.
"""

from __future__ import annotations

import numpy as np

from patchstore.config import BuildConfig
from patchstore.stages import kernels

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def view_angles(cfg: BuildConfig) -> np.ndarray:
    """(n_views,) float64 rotation angle in degrees of each view (0 for the unrotated ones)."""
    return np.repeat(np.array((0.0,) + cfg.angles), 1 + cfg.translations)


def view_shifted(cfg: BuildConfig) -> np.ndarray:
    """(n_views,) bool, True for the translated copies (t >= 1)."""
    return np.tile(np.arange(1 + cfg.translations) > 0, 1 + len(cfg.angles))


def draw_shifts(n_slices: int, cfg: BuildConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_slices, n_views, 2) float64 shifts (dy, dx) in pixels; zero for unshifted views.

    Draws every entry (also the ones zeroed after) so the stream does not depend on which views
    are shifted: one call of ``rng.uniform`` of that shape.
    """
    s = rng.uniform(-cfg.max_shift, cfg.max_shift, size=(n_slices, cfg.n_views, 2))
    s[:, ~view_shifted(cfg)] = 0.0
    return s


def draw_zooms(n_slices: int, cfg: BuildConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_slices, n_views) float64 zoom factors, log-uniform in [1 / (1 + zoom), 1 + zoom]; 1 for
    view 0, and everywhere when ``cfg.zoom`` is 0 (then ``rng`` is not used)."""
    z = np.ones((n_slices, cfg.n_views))
    if cfg.zoom > 0:
        r = np.log1p(cfg.zoom)
        z[:, 1:] = np.exp(rng.uniform(-r, r, size=(n_slices, cfg.n_views - 1)))
    return z


def draw_mirrors(n_slices: int, cfg: BuildConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_slices, n_views) bool, True for a view mirrored left-right (probability ``cfg.flip``);
    never view 0, and nowhere when ``cfg.flip`` is 0 (then ``rng`` is not used)."""
    m = np.zeros((n_slices, cfg.n_views), bool)
    if cfg.flip > 0:
        m[:, 1:] = rng.random((n_slices, cfg.n_views - 1)) < cfg.flip
    return m


def affine_map(angle: float, shift: np.ndarray, shape: tuple[int, int], zoom: float = 1.0,
               mirror: bool = False) -> np.ndarray:
    """(2, 3) float64 map from an OUTPUT pixel to the INPUT coordinate it samples.

    The view mirrors the slice left-right when ``mirror`` (F = diag(1, -1): columns reversed),
    zooms it by ``zoom`` and rotates it by ``angle`` degrees, all about c = ((H-1)/2, (W-1)/2)
    (counter-clockwise as displayed with row 0 at the top), then shifts it by t = (dy, dx):

        forward:  p_out = zoom R(angle) F (p_in - c) + c + t
        sampled:  p_in  = F R(-angle) (p_out - c - t) / zoom + c  =  M @ p_out + m

              (row, col) of output --M, m--> (y, x) in input --bilinear / nearest--> value

    with R(a) = [[cos a, -sin a], [sin a, cos a]] acting on (row, col), F = I without mirror.
    """
    th = np.deg2rad(angle)
    cos, sin = np.cos(th), np.sin(th)
    rot_inv = np.array([[cos, sin], [-sin, cos]]) / zoom
    if mirror:
        rot_inv = np.diag([1.0, -1.0]) @ rot_inv
    c = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0])
    offset = c - rot_inv @ (c + np.asarray(shift, dtype=np.float64))
    if angle == 0.0 and zoom == 1.0 and not mirror:  # keep the identity exact: cos(0) = 1, sin(0) = 0, offset = -t
        offset = -np.asarray(shift, dtype=np.float64)
    return np.ascontiguousarray(np.column_stack([rot_inv, offset]))


def slice_maps(angles: np.ndarray, shifts: np.ndarray, shape: tuple[int, int],
               zooms: np.ndarray | None = None, mirrors: np.ndarray | None = None) -> np.ndarray:
    """(n_views, 2, 3) float64 maps of one slice from (n_views,) angles, (n_views, 2) shifts,
    (n_views,) zoom factors (None: no zoom) and (n_views,) mirror flags (None: none)."""
    zooms = np.ones(len(angles)) if zooms is None else zooms
    mirrors = np.zeros(len(angles), bool) if mirrors is None else mirrors
    return np.stack([affine_map(a, s, shape, z, bool(f)) for a, s, z, f in zip(angles, shifts, zooms, mirrors)])


def volume_maps(cfg: BuildConfig, shifts: np.ndarray, shape: tuple[int, int],
                zooms: np.ndarray | None = None, mirrors: np.ndarray | None = None) -> np.ndarray:
    """(Z, n_views, 2, 3) float64 maps of every view of every slice from (Z, n_views, 2) shifts,
    (Z, n_views) zoom factors (None: no zoom) and (Z, n_views) mirror flags (None: none)."""
    angles = view_angles(cfg)
    zooms = np.ones(shifts.shape[:2]) if zooms is None else zooms
    mirrors = np.zeros(shifts.shape[:2], bool) if mirrors is None else mirrors
    return np.ascontiguousarray(np.stack([slice_maps(angles, s, shape, z, f) for s, z, f in zip(shifts, zooms, mirrors)])
                                .reshape(shifts.shape[:2] + (2, 3)))


def is_identity(m: np.ndarray) -> bool:
    """True when the (2, 3) map is exactly the identity (the view is the slice itself)."""
    return bool(np.array_equal(m, IDENTITY))


def view_image(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(H, W) float32 slice -> (H, W) float32 view (bilinear). The identity returns ``image``."""
    if is_identity(m):
        return image
    kernels.check_array("image slice", image, np.float32, 2)
    kernels.check_array("affine map", m, np.float64, 2)
    out = np.empty_like(image)
    kernels.resample_bilinear(image, m, out)
    return out


def view_mask(mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(H, W) uint8 slice -> (H, W) uint8 view (nearest). The identity returns ``mask``."""
    if is_identity(m):
        return mask
    kernels.check_array("mask slice", mask, np.uint8, 2)
    kernels.check_array("affine map", m, np.float64, 2)
    out = np.empty_like(mask)
    kernels.resample_nearest(mask, m, out)
    return out


def augment_slice(image: np.ndarray, mask: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All views of one slice: (V, H, W) float32 images and (V, H, W) uint8 masks.

    For tests and inspection; the build resamples one view at a time (``view_image``,
    ``view_mask``) so it never holds all views.
    """
    imgs = np.stack([view_image(image, m) for m in maps])
    masks = np.stack([view_mask(mask, m) for m in maps])
    return imgs, masks


NO_JITTER = (1, 0, 0, 0, 1)  # gain, offset, noise SD, blur SD, coarsening factor


def draw_jitter(n_slices: int, cfg: BuildConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n_slices, n_views, 5) float32 (gain, offset HU, noise SD HU, blur SD px, coarsening
    factor) and (n_slices, n_views) uint64 noise keys of the intensity augmentation; view 0 keeps
    ``NO_JITTER``.

    Every entry is drawn, also those reset after, so the stream depends only on the shape:
    gain, offset, noise SD, key, blur SD, coarsening factor (uniform in [1, coarsen]), each one
    ``rng`` call of shape (n_slices, n_views). The factor is drawn last, so the others are what
    they were before it existed.
    """
    shape = (n_slices, cfg.n_views)
    gain = rng.uniform(1 - cfg.hu_gain, 1 + cfg.hu_gain, shape)
    offset = rng.uniform(-cfg.hu_offset, cfg.hu_offset, shape)
    noise = rng.uniform(0, cfg.noise_hu, shape)
    keys = rng.integers(0, 2**63, shape, dtype=np.uint64)
    blur = rng.uniform(0, cfg.blur_px, shape)
    coarse = rng.uniform(1, cfg.coarsen, shape)
    jitter = np.stack([gain, offset, noise, blur, coarse], axis=-1).astype(np.float32)
    jitter[:, 0] = NO_JITTER
    if not cfg.jitters:
        jitter[...] = NO_JITTER
    return np.ascontiguousarray(jitter), keys

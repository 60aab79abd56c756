"""Window, smooth and quantize axial slices: the one preprocessing both build and inference use.

Placeholder reference implementation (NumPy/SciPy); the numba-backed version keeps these
signatures.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from patchstore.config import BuildConfig


def window(hu: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """HU outside [hu_min, hu_max] -> 0, the rest divided by hu_max. Any shape -> float32."""
    hu = np.asarray(hu, dtype=np.float32)
    inside = (hu >= hu_min) & (hu <= hu_max)
    return np.where(inside, hu / np.float32(hu_max), np.float32(0)).astype(np.float32)


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing within each axial slice ((..., H, W) float32), zero outside the slice."""
    if sigma == 0:
        return np.asarray(x, dtype=np.float32)
    s = (0,) * (x.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(x.astype(np.float32), s, mode="constant", cval=0.0, truncate=4.0)


def quantize(x: np.ndarray, dtype: str) -> np.ndarray:
    """[0, 1] float32 -> stored values: uint8 = round(x * 255), or float16."""
    if dtype == "uint8":
        return np.clip(np.rint(x * np.float32(255)), 0, 255).astype(np.uint8)
    return x.astype(np.float16)


def to_unit(q: np.ndarray) -> np.ndarray:
    """Stored values -> network input in [0, 1], float32."""
    if q.dtype == np.uint8:
        return q.astype(np.float32) / np.float32(255)
    return q.astype(np.float32)


def preprocess_float(hu: np.ndarray, cfg: BuildConfig) -> np.ndarray:
    """(Z, H, W) HU -> (Z, H, W) float32 in [0, 1]: window then smooth, before augmentation."""
    return smooth(window(hu, cfg.hu_min, cfg.hu_max), cfg.sigma)


def preprocess(hu: np.ndarray, cfg: BuildConfig) -> np.ndarray:
    """(Z, H, W) HU -> (Z, H, W) stored dtype, exactly what an un-augmented shard patch holds."""
    return quantize(preprocess_float(hu, cfg), cfg.dtype)

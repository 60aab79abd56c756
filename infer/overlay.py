"""PNG overlays of a few axial slices, like the paper's Figure 14: CT, reference and prediction.

Each PNG shows one axial slice twice, side by side: the CT alone in a bone window, and the CT with
the reference outlined in green and the prediction in red (filled lightly and outlined), with the
slice's 2-D DSC in the title. Pixels have their true aspect (sy / sx).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from infer.metrics import ratio
from patchstore.files import atomic_path

BONE_WINDOW_HU = (-500.0, 1300.0)  # level 400, width 1800
REF_COLOUR = "#00d000"
PRED_COLOUR = "#ff2020"


def choose_slices(pred: np.ndarray, ref: np.ndarray | None, n_slices: int) -> list[int]:
    """Up to ``n_slices`` distinct z indices, evenly spread, each the fullest slice of its stretch.

    The z range of slices holding any reference (else prediction) voxel is cut into ``n_slices``
    equal stretches, and in each the slice with the most reference (else prediction) voxels is
    taken. With both masks empty the slices are evenly spaced over the whole volume.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, not {n_slices}")
    source = ref if ref is not None and ref.any() else pred
    area = np.count_nonzero(source, axis=(1, 2))
    occupied = np.flatnonzero(area)
    if occupied.size == 0:
        return sorted({int(z) for z in np.linspace(0, area.size - 1, n_slices).round()})
    edges = np.linspace(occupied[0], occupied[-1] + 1, n_slices + 1).round().astype(int)
    chosen = {int(lo + np.argmax(area[lo:hi])) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo}
    return sorted(chosen)


def slice_dsc(pred: np.ndarray, ref: np.ndarray) -> float:
    """DSC of two (Y, X) bool slices; 1.0 when both are empty (as ``infer.metrics``)."""
    tp = int(np.count_nonzero(pred & ref))
    return ratio(2 * tp, int(np.count_nonzero(pred)) + int(np.count_nonzero(ref)))


def _draw(fig, ct: np.ndarray, pred: np.ndarray, ref: np.ndarray | None, aspect: float) -> None:
    """Fill ``fig`` with two panels: CT (Y, X) HU alone, and CT with ref/pred masks overlaid."""
    from matplotlib.colors import ListedColormap

    lo, hi = BONE_WINDOW_HU
    axes = fig.subplots(1, 2)
    for ax in axes:
        ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title("CT", fontsize=9)
    layers = [(ref, REF_COLOUR, "reference (green)"), (pred, PRED_COLOUR, "prediction (red)")]
    names = []
    for mask, colour, name in layers:
        if mask is None:
            continue
        names.append(name)
        tint = ListedColormap([(0, 0, 0, 0), colour])
        axes[1].imshow(mask, cmap=tint, vmin=0, vmax=1, alpha=0.25, aspect=aspect,
                       interpolation="nearest")
        if mask.any() and not mask.all():
            axes[1].contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8)
    axes[1].set_title(" / ".join(names), fontsize=9)


def _save_atomic(fig, path: Path) -> None:
    """Render ``fig`` to PNG at ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_overlays(
    out_dir,
    ct_hu: np.ndarray,
    pred: np.ndarray,
    ref: np.ndarray | None,
    spacing,
    n_slices: int = 4,
) -> list[Path]:
    """Write ``slice_ZZZZ.png`` overlays of up to ``n_slices`` axial slices; return their paths.

    ``ct_hu`` is (Z, Y, X) float in HU, ``pred`` and ``ref`` (Z, Y, X) bool (``ref`` may be None),
    ``spacing`` (sz, sy, sx) in mm. Slices are picked by ``choose_slices``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ct_hu = np.asarray(ct_hu)
    pred = np.asarray(pred, dtype=bool)
    if ct_hu.ndim != 3 or pred.shape != ct_hu.shape:
        raise ValueError(f"ct_hu {ct_hu.shape} and pred {pred.shape} must be (Z, Y, X) of equal shape")
    if ref is not None:
        ref = np.asarray(ref, dtype=bool)
        if ref.shape != ct_hu.shape:
            raise ValueError(f"ref shape {ref.shape} must equal ct_hu shape {ct_hu.shape}")
    sz, sy, sx = (float(s) for s in spacing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    aspect = sy / sx
    height = 4.0 * aspect * ct_hu.shape[1] / ct_hu.shape[2]
    paths = []
    for z in choose_slices(pred, ref, n_slices):
        fig = Figure(figsize=(8.0, min(max(height, 2.0), 12.0) + 0.6))
        FigureCanvasAgg(fig)
        r = None if ref is None else ref[z]
        _draw(fig, ct_hu[z], pred[z], r, aspect)
        title = f"z = {z} ({z * sz:.1f} mm)"
        if r is not None:
            title += f"   DSC = {100.0 * slice_dsc(pred[z], r):.1f} %"
        fig.suptitle(title, fontsize=10)
        path = out_dir / f"slice_{z:04d}.png"
        _save_atomic(fig, path)
        paths.append(path)
    return paths

"""Pictures of a segmentation: axial overlays like the paper's Figure 14, and one summary per case.

``write_summary`` draws the picture to look at first: a sagittal and a coronal view through the
predicted mask's centre, the CT in a bone window with the reference outlined in green and the
prediction in red. ``write_overlays`` draws a few axial slices (``choose_slices``), each twice
side by side: the CT alone, and the CT with both masks.

Every view is cropped to the body (``infer.postprocess.body_mask``, plus the masks, plus a
margin), drawn 1000 pixels wide in world millimetres (so pixels keep their true aspect), and
labelled with the patient directions of the canonical LPS array (``patchstore.io.geometry``):

    axial     R | L  columns run from the patient's right to left (radiological view)
              A over P
    sagittal  A | P, S over I     (superior at the top)
    coronal   R | L, S over I

and with the world position of its plane (z of an axial slice, x of the sagittal and y of the
coronal plane: LPS millimetres, as the file's origin and spacing place them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from patchstore.files import atomic_path

BONE_WINDOW_HU = (-500.0, 1300.0)  # level 400, width 1800
REF_COLOUR = "#00d000"
PRED_COLOUR = "#ff2020"
WIDTH_IN, DPI = 10.0, 100  # 1000 pixels wide
MARGIN_MM = 10.0
BODY_SAMPLE_SLICES = 16


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
    """DSC of two (Y, X) bool slices; 1.0 when both are empty (the title says "both empty" then)."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & ref)) / total


def body_box(ct_hu: np.ndarray, masks: list[np.ndarray], spacing_yx, margin_mm: float = MARGIN_MM
             ) -> tuple[slice, slice]:
    """(rows, cols) of the in-plane box holding the body (``body_mask`` of up to 16 evenly spaced
    slices) and every mask voxel, grown by ``margin_mm``; the whole plane when nothing is found."""
    from infer.postprocess import body_mask
    zs = np.unique(np.linspace(0, ct_hu.shape[0] - 1, min(BODY_SAMPLE_SLICES, ct_hu.shape[0])).round().astype(int))
    seen = body_mask(np.asarray(ct_hu[zs])).any(axis=0)
    for m in masks:
        seen |= m.any(axis=0)
    if not seen.any():
        return slice(0, ct_hu.shape[1]), slice(0, ct_hu.shape[2])
    box = []
    for axis, spacing in ((0, spacing_yx[0]), (1, spacing_yx[1])):
        idx = np.flatnonzero(seen.any(axis=1 - axis))
        grow = int(np.ceil(margin_mm / spacing))
        box.append(slice(max(int(idx[0]) - grow, 0), min(int(idx[-1]) + 1 + grow, seen.shape[axis])))
    return box[0], box[1]


def _extent(index: slice, origin: float, spacing: float) -> tuple[float, float]:
    """World mm of the outer edges of the pixels ``index`` along one axis."""
    return origin + (index.start - 0.5) * spacing, origin + (index.stop - 0.5) * spacing


def _letters(ax, left: str, right: str, top: str, bottom: str) -> None:
    style = {"transform": ax.transAxes, "color": "white", "fontsize": 11, "fontweight": "bold",
             "bbox": {"facecolor": "black", "alpha": 0.5, "edgecolor": "none", "pad": 1.5}}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _draw(ax, ct: np.ndarray, masks: list[tuple[np.ndarray | None, str]], extent, origin: str) -> None:
    """CT (rows, cols) in HU, and each (mask, colour) filled lightly and outlined, over ``extent`` mm."""
    from matplotlib.colors import ListedColormap

    lo, hi = BONE_WINDOW_HU
    ax.imshow(ct, cmap="gray", vmin=lo, vmax=hi, extent=extent, origin=origin, interpolation="nearest")
    for mask, colour in masks:
        if mask is None:
            continue
        tint = ListedColormap([(0, 0, 0, 0), colour])
        ax.imshow(mask, cmap=tint, vmin=0, vmax=1, alpha=0.25, extent=extent, origin=origin,
                  interpolation="nearest")
        if mask.any() and not mask.all() and min(mask.shape) >= 2:  # contour needs a 2 x 2 grid
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8, extent=extent,
                       origin=origin)
    ax.set_aspect("equal")


def _figure(height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(WIDTH_IN, min(max(height_in, 3.0), 16.0)), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_atomic(fig, path: Path) -> None:
    """Render ``fig`` to PNG at ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _check(ct_hu, pred, ref) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ct_hu = np.asarray(ct_hu)
    pred = np.asarray(pred, dtype=bool)
    if ct_hu.ndim != 3 or pred.shape != ct_hu.shape:
        raise ValueError(f"ct_hu {ct_hu.shape} and pred {pred.shape} must be (Z, Y, X) of equal shape")
    if ref is not None:
        ref = np.asarray(ref, dtype=bool)
        if ref.shape != ct_hu.shape:
            raise ValueError(f"ref shape {ref.shape} must equal ct_hu shape {ct_hu.shape}")
    return ct_hu, pred, ref


def _legend(ref: np.ndarray | None) -> str:
    return "prediction (red)" + ("" if ref is None else " / reference (green)")


def write_overlays(out_dir, ct_hu: np.ndarray, pred: np.ndarray, ref: np.ndarray | None, spacing,
                   n_slices: int = 4, origin_zyx=(0.0, 0.0, 0.0)) -> list[Path]:
    """Write ``slice_ZZZZ.png`` overlays of up to ``n_slices`` axial slices; return their paths.

    ``ct_hu`` is (Z, Y, X) float in HU, ``pred`` and ``ref`` (Z, Y, X) bool (``ref`` may be None),
    ``spacing`` (sz, sy, sx) and ``origin_zyx`` the canonical (LPS) geometry in mm. Slices are
    picked by ``choose_slices``.
    """
    ct_hu, pred, ref = _check(ct_hu, pred, ref)
    (sz, sy, sx), (oz, oy, ox) = (tuple(float(v) for v in t) for t in (spacing, origin_zyx))
    rows, cols = body_box(ct_hu, [pred] + ([] if ref is None else [ref]), (sy, sx))
    extent = (*_extent(cols, ox, sx), *_extent(rows, oy, sy)[::-1])  # rows downwards: anterior at the top
    panel_aspect = (rows.stop - rows.start) * sy / ((cols.stop - cols.start) * sx)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in choose_slices(pred, ref, n_slices):
        fig = _figure(0.47 * WIDTH_IN * panel_aspect + 0.9)
        left, right = fig.subplots(1, 2)
        r = None if ref is None else ref[z, rows, cols]
        _draw(left, ct_hu[z, rows, cols], [], extent, "upper")
        _draw(right, ct_hu[z, rows, cols], [(r, REF_COLOUR), (pred[z, rows, cols], PRED_COLOUR)], extent, "upper")
        for ax, name in ((left, "CT"), (right, _legend(ref))):
            ax.set_axis_off()
            ax.set_title(name, fontsize=10)
            _letters(ax, "R", "L", "A", "P")
        title = f"axial slice {z} of {ct_hu.shape[0]}, z = {oz + z * sz:.1f} mm"
        if ref is not None:
            both_empty = not (pred[z].any() or ref[z].any())
            title += "   DSC: both masks empty" if both_empty else f"   DSC = {100.0 * slice_dsc(pred[z], ref[z]):.1f} %"
        fig.suptitle(title, fontsize=11)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.03)
        path = out_dir / f"slice_{z:04d}.png"
        _save_atomic(fig, path)
        paths.append(path)
    return paths


def plane_centre(pred: np.ndarray, ref: np.ndarray | None) -> tuple[int, int, str]:
    """(x, y) index of the sagittal and coronal planes through the centre of the predicted mask
    (else the reference, else the volume), and which of the three it is."""
    for mask, name in ((pred, "the prediction"), (ref, "the reference")):
        if mask is not None and mask.any():
            _, y, x = (int(round(c)) for c in np.argwhere(mask).mean(axis=0))
            return x, y, name
    return pred.shape[2] // 2, pred.shape[1] // 2, "the volume (both masks empty)"


def write_summary(path, ct_hu: np.ndarray, pred: np.ndarray, ref: np.ndarray | None, spacing,
                  origin_zyx=(0.0, 0.0, 0.0), title: str = "") -> Path:
    """Write one PNG, 1000 pixels wide: a sagittal (left) and a coronal (right) view through the
    centre of the predicted mask, CT with the prediction (and reference) over it; return its path.

    Arguments as ``write_overlays``; ``title`` (e.g. the case name) heads the picture.
    """
    ct_hu, pred, ref = _check(ct_hu, pred, ref)
    (sz, sy, sx), (oz, oy, ox) = (tuple(float(v) for v in t) for t in (spacing, origin_zyx))
    rows, cols = body_box(ct_hu, [pred] + ([] if ref is None else [ref]), (sy, sx))
    x, y, centre = plane_centre(pred, ref)
    zs = slice(0, ct_hu.shape[0])
    z_range = _extent(zs, oz, sz)
    views = [  # (name, CT plane, prediction, reference, extent, letters, world position)
        ("sagittal", ct_hu[:, rows, x], pred[:, rows, x], None if ref is None else ref[:, rows, x],
         (*_extent(rows, oy, sy), *z_range), ("A", "P", "S", "I"), f"x = {ox + x * sx:.1f} mm"),
        ("coronal", ct_hu[:, y, cols], pred[:, y, cols], None if ref is None else ref[:, y, cols],
         (*_extent(cols, ox, sx), *z_range), ("R", "L", "S", "I"), f"y = {oy + y * sy:.1f} mm"),
    ]
    widths = [v[4][1] - v[4][0] for v in views]
    height_mm = z_range[1] - z_range[0]
    fig = _figure(0.9 * WIDTH_IN * height_mm / sum(widths) + 1.3)
    axes = fig.subplots(1, 2, width_ratios=widths)
    for ax, (name, ct, p, r, extent, letters, where) in zip(axes, views):
        _draw(ax, ct, [(r, REF_COLOUR), (p, PRED_COLOUR)], extent, "lower")  # row 0 inferior: superior at the top
        ax.set_title(f"{name}, {where}", fontsize=10)
        ax.set_xlabel("mm", fontsize=8)
        ax.tick_params(labelsize=7)
        _letters(ax, *letters)
    axes[0].set_ylabel("z (mm)", fontsize=8)
    fig.suptitle(f"{title}   {_legend(ref)}; planes through the centre of {centre}".strip(), fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.06, top=0.92, wspace=0.12)
    _save_atomic(fig, Path(path))
    return Path(path)

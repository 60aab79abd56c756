"""build_volume end to end on a small synthetic CT: counts, labels, patches, determinism."""

import numpy as np
import pytest

from patchstore.config import BuildConfig
from patchstore.stages import augment, kernels
from patchstore.stages.balance import class_counts
from patchstore.stages.patches import grid_shape
from patchstore.stages.pipeline import build_volume, child_seeds
from patchstore.stages.preprocess import preprocess_float, quantize
from patchstore.stages.resample import plane_grid, to_grid_image, to_grid_mask

N, STRIDE = 16, 6


@pytest.fixture(scope="module")
def volume():
    """(4, 70, 64) HU image with a bright 'vertebra' disc and ribs-like noise; its 0/1 mask."""
    rng = np.random.default_rng(5)
    z, h, w = 4, 70, 64
    image = rng.normal(40, 30, (z, h, w)).astype(np.float32)
    i, j = np.indices((h, w))
    mask = np.zeros((z, h, w), np.uint8)
    for k in range(z):
        disc = (i - 35 - k) ** 2 + (j - 30) ** 2 < (14 + k) ** 2
        mask[k] = disc
        image[k][disc] = rng.uniform(300, 1400, disc.sum())
    image[:, 5:9, 50:60] = 800.0  # bone that is not vertebra
    return image, mask


def cfg_for(**kw):
    return BuildConfig.paper(patch=N, stride=STRIDE, **kw)


def test_counts_and_labels_view0(volume):
    """counts_before/after follow the grid and RUS; view-0 labels follow the 513 rule on the mask."""
    image, mask = volume
    cfg = cfg_for()
    out = build_volume(image, mask, cfg, np.random.SeedSequence(11))
    gr, gc = grid_shape(image.shape[1:], N, STRIDE)
    assert sum(out.counts_before) == image.shape[0] * cfg.n_views * gr * gc
    n0, n1 = out.counts_before
    assert 0 < n1 < n0
    assert out.counts_after == (min(n0, round(cfg.ratio * n1)), n1) == class_counts(out.labels)
    assert out.patches.shape == (len(out.labels), N, N) and out.patches.dtype == np.uint8
    assert out.origin.dtype == np.int32 and out.labels.dtype == np.uint8
    key = ((out.origin[:, 0] * cfg.n_views + out.origin[:, 3]) * gr + out.origin[:, 1] // STRIDE) * gc
    assert np.all(np.diff(key + out.origin[:, 2] // STRIDE) > 0)  # candidate order
    v0 = out.origin[:, 3] == 0
    assert v0.sum() > 0
    for (z, r, c, _), lab in zip(out.origin[v0], out.labels[v0]):
        assert lab == int(mask[z, r : r + N, c : c + N].sum() * 2 > N * N)


def test_labels_of_augmented_views_follow_their_mask_view(volume):
    """Labels of rotated/shifted views equal the rule on the mask view drawn with the same shifts."""
    image, mask = volume
    cfg = cfg_for()
    seq = np.random.SeedSequence(11)
    out = build_volume(image, mask, cfg, seq)
    shifts = augment.draw_shifts(image.shape[0], cfg, np.random.default_rng(child_seeds(seq, 2)[0]))
    angles = augment.view_angles(cfg)
    for (z, r, c, a), lab in zip(out.origin, out.labels):
        m = augment.affine_map(angles[a], shifts[z, a], image.shape[1:])
        mv = augment.view_mask(mask[z], m)
        assert lab == int(mv[r : r + N, c : c + N].sum() * 2 > N * N)


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_view0_patches_are_quantized_preprocess(volume, dtype):
    """Patches of view 0 equal quantize(preprocess_float(image)) cropped at their origin."""
    image, mask = volume
    cfg = cfg_for(dtype=dtype)
    out = build_volume(image, mask, cfg, np.random.SeedSequence(3))
    ref = quantize(preprocess_float(image, cfg), dtype)
    assert out.patches.dtype == np.dtype(dtype)
    for p, (z, r, c, a) in zip(out.patches, out.origin):
        if a == 0:
            np.testing.assert_array_equal(p, ref[z, r : r + N, c : c + N])


def test_rerun_is_byte_identical_and_seed_matters(volume):
    """Same inputs and the same SeedSequence object give identical bytes; another seed differs."""
    image, mask = volume
    cfg = cfg_for()
    seq = np.random.SeedSequence(2024)
    a = build_volume(image, mask, cfg, seq)
    b = build_volume(image, mask, cfg, seq)
    for f in ("patches", "labels", "origin"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes()
    c = build_volume(image, mask, cfg, np.random.SeedSequence(2025))
    assert c.origin.tobytes() != a.origin.tobytes()


def test_no_rus_no_augmentation_keeps_every_candidate(volume):
    """rus=False keeps all candidates; with no augmentation they are the plain grid of each slice."""
    image, mask = volume
    cfg = cfg_for(rus=False, angles=(), translations=0)
    calls = []
    out = build_volume(image, mask, cfg, np.random.SeedSequence(0), progress=calls.append)
    gr, gc = grid_shape(image.shape[1:], N, STRIDE)
    assert out.counts_after == out.counts_before and len(out.labels) == image.shape[0] * gr * gc
    assert np.all(out.origin[:, 3] == 0)
    assert sum(calls) == 2 * image.shape[0]


def test_bad_inputs_raise(volume):
    """A float64 image or a multi-label mask is refused with the value expected."""
    image, mask = volume
    with pytest.raises(TypeError, match="float32"):
        build_volume(image.astype(np.float64), mask, cfg_for(), np.random.SeedSequence(0))
    with pytest.raises(ValueError, match="0/1"):
        build_volume(image, mask * 25, cfg_for(), np.random.SeedSequence(0))


def test_augmented_patches_are_crops_of_their_view(volume):
    """Patches of rotated/shifted views equal quantize(view_image(preprocessed slice)) crops."""
    image, mask = volume
    cfg = cfg_for()
    seq = np.random.SeedSequence(8)
    out = build_volume(image, mask, cfg, seq)
    pre = preprocess_float(image, cfg)
    shifts = augment.draw_shifts(image.shape[0], cfg, np.random.default_rng(child_seeds(seq, 2)[0]))
    angles = augment.view_angles(cfg)
    assert np.any(out.origin[:, 3] > 0)
    for p, (z, r, c, a) in zip(out.patches, out.origin):
        view = augment.view_image(pre[z], augment.affine_map(angles[a], shifts[z, a], image.shape[1:]))
        np.testing.assert_array_equal(p, quantize(view[r : r + N, c : c + N], "uint8"))


def test_native_pixel_size_is_bit_identical_to_no_resampling(volume):
    """pixel_mm equal to the slices' spacing keeps the native grid: the same bytes as pixel_mm=None."""
    image, mask = volume
    a = build_volume(image, mask, cfg_for(), np.random.SeedSequence(4))
    b = build_volume(image, mask, cfg_for(pixel_mm=0.7), np.random.SeedSequence(4), spacing_yx=(0.7, 0.7))
    for x, y in ((a.patches, b.patches), (a.labels, b.labels), (a.origin, b.origin)):
        assert np.array_equal(x, y)


def test_finer_pixels_cut_view0_patches_from_the_resampled_slice(volume):
    """At half the pixel size view-0 patches are crops of the bilinearly resampled, windowed slice
    and labels follow the rule on the nearest-neighbour resampled mask."""
    image, mask = volume
    cfg = cfg_for(pixel_mm=0.35, angles=(), translations=0, rus=False)
    out = build_volume(image, mask, cfg, np.random.SeedSequence(4), spacing_yx=(0.7, 0.7))
    grid = plane_grid(image.shape[1:], (0.7, 0.7), 0.35)
    assert grid.shape == (140, 128)
    assert sum(out.counts_before) == image.shape[0] * int(np.prod(grid_shape(grid.shape, N, STRIDE)))
    big_img = preprocess_float(to_grid_image(grid, image), cfg)
    big_mask = to_grid_mask(grid, mask)
    for k in range(0, len(out.labels), 97):
        z, r, c, _ = out.origin[k]
        assert np.array_equal(out.patches[k], quantize(big_img[z, r:r + N, c:c + N], "uint8"))
        assert out.labels[k] == int(big_mask[z, r:r + N, c:c + N].sum() * 2 > N * N)


def test_centre_rule_labels_by_the_centre_pixel(volume):
    image, mask = volume
    out = build_volume(image, mask, cfg_for(label_rule="centre", angles=(), translations=0, rus=False),
                       np.random.SeedSequence(4))
    z, r, c = out.origin[:, 0], out.origin[:, 1] + N // 2, out.origin[:, 2] + N // 2
    assert np.array_equal(out.labels, mask[z, r, c])


def test_intensity_jitter_spares_view_0_and_changes_the_others(volume):
    """Jitter leaves the original view's patches as they were and alters the augmented views'; the
    same seed gives the same bytes."""
    image, mask = volume
    plain = build_volume(image, mask, cfg_for(rus=False), np.random.SeedSequence(4))
    cfg = cfg_for(rus=False, hu_gain=0.1, hu_offset=40, noise_hu=30)
    a = build_volume(image, mask, cfg, np.random.SeedSequence(4))
    b = build_volume(image, mask, cfg, np.random.SeedSequence(4))
    assert np.array_equal(a.patches, b.patches) and np.array_equal(a.labels, plain.labels)
    v0 = a.origin[:, 3] == 0
    assert np.array_equal(a.patches[v0], plain.patches[v0])
    changed = (a.patches[~v0] != plain.patches[~v0]).mean()
    assert changed > 0.2


def test_jitter_draws_do_not_depend_on_the_other_streams():
    """Turning jitter on or off leaves the shifts and the RUS draws as they were."""
    cfg = cfg_for(hu_gain=0.1)
    g, keys = augment.draw_jitter(5, cfg, np.random.default_rng(1))
    assert g.shape == (5, cfg.n_views, 5) and keys.dtype == np.uint64
    assert np.all(g[:, 0] == (1, 0, 0, 0, 1)) and np.all(np.abs(g[:, 1:, 0] - 1) <= 0.1)
    assert np.all(g[:, :, 1:4] == 0) and np.all(g[:, :, 4] == 1)
    off, _ = augment.draw_jitter(5, cfg_for(), np.random.default_rng(1))
    assert np.all(off == (1, 0, 0, 0, 1))
    c, c_keys = augment.draw_jitter(5, cfg_for(hu_gain=0.1, coarsen=2.0), np.random.default_rng(1))
    assert np.array_equal(c[..., :4], g[..., :4]) and np.array_equal(c_keys, keys)  # drawn last
    assert np.all((c[:, 1:, 4] >= 1) & (c[:, 1:, 4] <= 2)) and c[:, 1:, 4].std() > 0.2


def test_blur_jitter_smooths_the_augmented_views(volume):
    """With blur only, augmented views' patches are smoother (smaller pixel-to-pixel steps) than without."""
    image, mask = volume
    plain = build_volume(image, mask, cfg_for(rus=False, sigma=0), np.random.SeedSequence(4))
    blurred = build_volume(image, mask, cfg_for(rus=False, sigma=0, blur_px=2.0), np.random.SeedSequence(4))
    aug = blurred.origin[:, 3] > 0
    step = lambda p: np.abs(np.diff(p.astype(np.int16), axis=2)).mean()  # noqa: E731
    assert step(blurred.patches[aug]) < 0.8 * step(plain.patches[aug])
    assert np.array_equal(blurred.patches[~aug], plain.patches[~aug])


def test_coarsening_blurs_the_augmented_views_as_their_drawn_factor_says(volume):
    """With coarsening only, view 0 stays, the augmented views lose fine detail, and each is the
    kernel's coarsened view of its slice with the factor drawn for it."""
    image, mask = volume
    cfg = cfg_for(rus=False, sigma=0, coarsen=3.0, angles=(), translations=1, max_shift=0)
    plain = build_volume(image, mask, cfg_for(rus=False, sigma=0), np.random.SeedSequence(4))
    seq = np.random.SeedSequence(4)
    coarse = build_volume(image, mask, cfg, seq)
    aug = coarse.origin[:, 3] > 0
    assert np.array_equal(coarse.patches[~aug], plain.patches[plain.origin[:, 3] == 0])
    step = lambda p: np.abs(np.diff(p.astype(np.int16), axis=2)).mean()  # noqa: E731
    assert step(coarse.patches[aug]) < 0.8 * step(coarse.patches[~aug])
    jitter, _ = augment.draw_jitter(image.shape[0], cfg, np.random.default_rng(child_seeds(seq, 3)[2]))
    for p, (z, r, c, a) in list(zip(coarse.patches, coarse.origin))[::7]:
        if a:
            view = np.empty_like(image[z])
            kernels.coarsen_slice(image[z], jitter[z, a, 4], view)
            np.testing.assert_array_equal(p, quantize(preprocess_float(view[None], cfg)[0][r : r + N, c : c + N],
                                                      "uint8"))


def test_zoom_spares_view_0_and_its_draws_leave_the_other_streams(volume):
    """Zoom leaves view 0 and every other draw (shifts, RUS over the same candidates, jitter) as
    they were: with zoom 0 the build is the one without the option."""
    image, mask = volume
    plain = build_volume(image, mask, cfg_for(rus=False, hu_gain=0.1), np.random.SeedSequence(4))
    zoomed = build_volume(image, mask, cfg_for(rus=False, hu_gain=0.1, zoom=0.3), np.random.SeedSequence(4))
    assert np.array_equal(plain.origin, zoomed.origin)
    v0 = plain.origin[:, 3] == 0
    assert np.array_equal(zoomed.patches[v0], plain.patches[v0])
    assert (zoomed.patches[~v0] != plain.patches[~v0]).mean() > 0.2
    z = augment.draw_zooms(6, cfg_for(zoom=0.3), np.random.default_rng(1))
    assert z.shape == (6, cfg_for().n_views) and np.all(z[:, 0] == 1)
    assert np.all((z[:, 1:] >= 1 / 1.3) & (z[:, 1:] <= 1.3)) and (z[:, 1:] < 1).any() and (z[:, 1:] > 1).any()
    assert np.all(augment.draw_zooms(6, cfg_for(), np.random.default_rng(1)) == 1)


def test_mirror_spares_view_0_and_its_draws_leave_the_other_streams(volume):
    """Mirroring leaves view 0 and every other draw as they were (flip 0 is the build without the
    option); it mirrors about the given share of the other views, never view 0."""
    image, mask = volume
    plain = build_volume(image, mask, cfg_for(rus=False, zoom=0.2), np.random.SeedSequence(4))
    flipped = build_volume(image, mask, cfg_for(rus=False, zoom=0.2, flip=0.5), np.random.SeedSequence(4))
    assert np.array_equal(plain.origin, flipped.origin)
    v0 = plain.origin[:, 3] == 0
    assert np.array_equal(flipped.patches[v0], plain.patches[v0])
    assert (flipped.patches[~v0] != plain.patches[~v0]).mean() > 0.1
    f = augment.draw_mirrors(400, cfg_for(flip=0.5), np.random.default_rng(1))
    assert f.shape == (400, cfg_for().n_views) and not f[:, 0].any() and 0.45 < f[:, 1:].mean() < 0.55
    assert not augment.draw_mirrors(6, cfg_for(), np.random.default_rng(1)).any()
    assert augment.draw_mirrors(6, cfg_for(flip=1.0), np.random.default_rng(1))[:, 1:].all()


@pytest.mark.parametrize("extra", [{"zoom": 0.3}, {"zoom": 0.3, "flip": 0.5}])
def test_zoomed_views_label_and_crop_their_zoomed_slice(volume, extra):
    """A zoomed (and mirrored) view's labels follow the rule on its mask view and its patches are
    crops of its image view, both through the map with the zoom drawn from child 3 of the seed
    and the mirror from child 4."""
    image, mask = volume
    cfg = cfg_for(**extra)
    seq = np.random.SeedSequence(8)
    out = build_volume(image, mask, cfg, seq)
    seeds = child_seeds(seq, 5)
    shifts = augment.draw_shifts(image.shape[0], cfg, np.random.default_rng(seeds[0]))
    zooms = augment.draw_zooms(image.shape[0], cfg, np.random.default_rng(seeds[3]))
    mirrors = augment.draw_mirrors(image.shape[0], cfg, np.random.default_rng(seeds[4]))
    assert mirrors.any() == (cfg.flip > 0)
    angles, pre = augment.view_angles(cfg), preprocess_float(image, cfg)
    assert np.any(out.origin[:, 3] > 0)
    for p, lab, (z, r, c, a) in zip(out.patches, out.labels, out.origin):
        m = augment.affine_map(angles[a], shifts[z, a], image.shape[1:], zooms[z, a], mirrors[z, a])
        np.testing.assert_array_equal(p, quantize(augment.view_image(pre[z], m)[r : r + N, c : c + N], "uint8"))
        assert lab == int(augment.view_mask(mask[z], m)[r : r + N, c : c + N].sum() * 2 > N * N)

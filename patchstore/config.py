"""Build parameters: one frozen dataclass, stored verbatim in every shard and the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

FORMAT_VERSION = 1
DTYPES = ("uint8", "float16")
LABEL_RULES = ("majority", "centre")
# Fields added after format 1 was first written, with the value every older shard set was built
# with: a stored build without them reads as exactly what it was (not as today's defaults).
# The paper's build (section II.A-C) where the defaults differ from it.
PAPER = {"stride": 12, "pixel_mm": None, "label_rule": "majority", "hu_gain": 0.0, "hu_offset": 0.0, "noise_hu": 0.0,
         "blur_px": 0.0, "zoom": 0.0, "flip": 0.0, "coarsen": 1.0}
LEGACY_VALUES = {"pixel_mm": None, "label_rule": "majority", "hu_gain": 0.0, "hu_offset": 0.0, "noise_hu": 0.0,
                 "blur_px": 0.0, "zoom": 0.0, "flip": 0.0, "coarsen": 1.0}


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the content of a shard set (paper section II.A-C).

    Intensities: HU outside [hu_min, hu_max] become 0, the rest is divided by hu_max, so the
    windowed slice lies in [0, 1] with 0 meaning "outside the bone window" (air, soft tissue).
    Views per slice: the original and one rotation per entry of ``angles`` (degrees), each
    followed by ``translations`` randomly shifted copies (uniform in +-max_shift pixels), so
    ``(1 + len(angles)) * (1 + translations)`` views in all; view 0 is the original slice. Every
    other view is zoomed about the slice centre by a factor log-uniform in [1 / (1 + zoom),
    1 + zoom] (zoom 0: none), and mirrored left-right with probability ``flip``, drawn per
    (slice, view).

    Intensity augmentation of every view but view 0, before windowing (``stages.augment``):
    HU * gain + offset + noise, gain uniform in [1 - hu_gain, 1 + hu_gain], offset uniform in
    [-hu_offset, hu_offset] HU, Gaussian noise of an SD uniform in [0, noise_hu] HU, then a
    Gaussian blur of an SD uniform in [0, blur_px] working pixels (a coarser scanner or thicker
    slices), then the view as pixels f times larger show it, f uniform in [1, coarsen]
    (``kernels.coarsen_slice``: a coarse scan brought to the working pixels); drawn per (slice,
    view). All 0 (coarsen 1): off (the paper).

    Pixel size: ``pixel_mm`` resamples every axial slice in-plane to square pixels of that size
    (mm) before windowing (``stages.resample``); None keeps the native pixels (the paper). Label
    rule (``stages.patches``): "majority", the paper's, calls a patch vertebra when more than
    half its pixels are; "centre" when its centre pixel (row and column n/2) is, the pixel that
    stride-1 inference gives the patch's decision to.

    Defaults are the recipe measured best on real CT from other scanners (README, "Quality"):
    centre rule at 1.4 mm pixels (a 32x32 patch sees 45 mm: enough to tell a vertebra from a rib
    or scapula), stride 3 (4.2 mm, the paper's 12 px at 0.35 mm), intensity augmentation (gain
    0.75-1.25: osteoporotic to dense bone; offset 40 HU; noise up to 60 HU, as in low-dose CT
    such as a PET/CT's; blur up to 1.5 px: a 3 mm scan seen at 1.4 mm), zoom up to 1.2x and down to
    1/1.2 (vertebrae of other sizes: patients, levels). ``BuildConfig.paper()`` (and
    `patchstore build --paper`) is the paper's build: native pixels, majority rule, stride 12,
    no intensity augmentation, no zoom.
    """

    hu_min: float = 100.0
    hu_max: float = 1500.0
    sigma: float = 0.8
    patch: int = 32
    stride: int = 3
    angles: tuple[float, ...] = (-10.0, 10.0)
    translations: int = 1
    max_shift: float = 4.0
    rus: bool = True
    ratio: float = 1.0
    seed: int = 0
    dtype: str = "uint8"
    labels: tuple[int, ...] = ()
    shard_mb: float = 1024.0
    pixel_mm: float | None = 1.4
    label_rule: str = "centre"
    hu_gain: float = 0.25
    hu_offset: float = 40.0
    noise_hu: float = 60.0
    blur_px: float = 1.5
    coarsen: float = 1.0
    zoom: float = 0.2
    flip: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        object.__setattr__(self, "labels", tuple(int(v) for v in self.labels))
        if self.pixel_mm is not None:
            object.__setattr__(self, "pixel_mm", float(self.pixel_mm))
        checks = [
            (self.hu_min < self.hu_max, "hu_min", self.hu_min, f"a value below hu_max={self.hu_max}"),
            (self.hu_max > 0, "hu_max", self.hu_max, "a positive HU value"),
            (self.sigma >= 0, "sigma", self.sigma, "a value >= 0 (0 disables smoothing)"),
            (self.patch >= 4 and self.patch % 2 == 0, "patch", self.patch, "an even size >= 4"),
            (self.stride >= 1, "stride", self.stride, "an integer >= 1"),
            (self.translations >= 0, "translations", self.translations, "an integer >= 0"),
            (self.max_shift >= 0, "max_shift", self.max_shift, "a value >= 0"),
            (self.ratio > 0, "ratio", self.ratio, "a positive majority:minority ratio"),
            (self.dtype in DTYPES, "dtype", self.dtype, f"one of {DTYPES}"),
            (self.shard_mb > 0, "shard_mb", self.shard_mb, "a positive size in MB"),
            (0 <= self.seed < 2**63, "seed", self.seed, "an integer in [0, 2**63)"),
            (self.pixel_mm is None or 0.05 <= self.pixel_mm <= 10, "pixel_mm", self.pixel_mm,
             "None (native pixels) or a pixel size in mm between 0.05 and 10"),
            (self.label_rule in LABEL_RULES, "label_rule", self.label_rule, f"one of {LABEL_RULES}"),
            (0 <= self.hu_gain < 1, "hu_gain", self.hu_gain, "a fraction in [0, 1)"),
            (self.hu_offset >= 0, "hu_offset", self.hu_offset, "an HU range >= 0"),
            (self.noise_hu >= 0, "noise_hu", self.noise_hu, "a noise SD in HU >= 0"),
            (0 <= self.blur_px <= 8, "blur_px", self.blur_px, "a blur SD in pixels in [0, 8]"),
            (1 <= self.coarsen <= 8, "coarsen", self.coarsen, "a pixel-size factor in [1, 8]"),
            (0 <= self.zoom <= 1, "zoom", self.zoom, "a fraction in [0, 1] (factors 1/(1+zoom) .. 1+zoom)"),
            (0 <= self.flip <= 1, "flip", self.flip, "a probability in [0, 1]"),
        ]
        for ok, field, found, expected in checks:
            if not ok:
                raise ValueError(f"Build parameter {field!r} is {found!r}; expected {expected}")

    @classmethod
    def paper(cls, **overrides) -> "BuildConfig":
        """The paper's build, with ``overrides``."""
        return cls(**{**PAPER, **overrides})

    @property
    def jitters(self) -> bool:
        """Does the build augment intensities?"""
        return self.hu_gain > 0 or self.hu_offset > 0 or self.noise_hu > 0 or self.blur_px > 0 or self.coarsen > 1

    @property
    def n_views(self) -> int:
        return (1 + len(self.angles)) * (1 + self.translations)

    def to_dict(self) -> dict:
        """JSON-shaped (tuples as lists), so it compares equal to what a shard or manifest stores."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "BuildConfig":
        """From stored parameters; fields an older shard set lacks take their LEGACY_VALUES."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown build parameters {unknown}; expected a subset of {sorted(names)}")
        d = {**{k: v for k, v in LEGACY_VALUES.items() if k not in d}, **d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def content_key(self) -> str:
        """Hash of the parameters that decide shard contents (shard_mb only splits files)."""
        d = self.to_dict()
        d.pop("shard_mb")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Build parameters that decide what a patch looks like and what its label means: training and
# inference (and test shards) must agree on them. The others (stride, augmentation, RUS, seed,
# shard size) only decide which patches there are, and may differ between training and test shards.
# ``labels`` is neither: it says which values of one source's masks are vertebra (TotalSegmentator
# 26-50, a phantom's 1), and after the build every label is vertebra or background whatever it
# was; so folders from sources with other conventions train together (``train.data.load_sets``
# names the difference).
PREPROCESSING_FIELDS = ("hu_min", "hu_max", "sigma", "patch", "dtype", "pixel_mm", "label_rule")


def differing_fields(a: dict, b: dict) -> list[str]:
    """Names of parameters whose values differ between two parameter dicts, sorted."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def describe_differences(found: dict, expected: dict, found_where: str, expected_where: str,
                         fields: list[str] | None = None) -> str:
    """The one wording of "these parameters differ", e.g. ``seed=0 there, 1 now; sigma=...``.

    ``fields`` defaults to every differing field; ``found_where`` / ``expected_where`` say where
    each value comes from ("in shards/a.h5", "in the manifest", "now").
    """
    fields = differing_fields(found, expected) if fields is None else fields
    return "; ".join(f"{k}={found.get(k)!r} {found_where}, {expected.get(k)!r} {expected_where}" for k in fields)

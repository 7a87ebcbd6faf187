"""The findings section of the SR and SC: the bleed's side and site, intraventricular blood,
midline shift and oedema (`Prediction.findings`, measured by hexnode.models.findings)."""

from __future__ import annotations

import highdicom as hd

from hexnode.pipeline.contracts import Findings, Prediction
from hexnode.report import codes

LATERALITY = {"left": codes.LEFT, "right": codes.RIGHT, "bilateral": codes.BILATERAL, "midline": codes.MIDLINE}
SITE_WORDS = {"basal_ganglia": "deep (basal ganglia)", "thalamus": "deep (thalamus)", "cerebellum": "cerebellar",
              "brainstem": "brainstem", "ventricles": "intraventricular", "frontal": "frontal lobar",
              "parietal": "parietal lobar", "temporal": "temporal lobar", "occipital": "occipital lobar"}


def finding_sites(findings: Findings | None) -> list[hd.sr.FindingSite]:
    """The bleed's site with its laterality; the brain when nothing was measured."""
    if findings is None:
        return [hd.sr.FindingSite(anatomic_location=codes.BRAIN)]
    return [hd.sr.FindingSite(anatomic_location=codes.SITES[findings.site], laterality=LATERALITY[findings.side])]


def headline(prediction: Prediction) -> str | None:
    """E.g. "Left deep (basal ganglia) hemorrhage 12.4 ml, IVH 2.1 ml, MLS 3 mm to the right"."""
    f = prediction.findings
    if f is None or not prediction.hemorrhage_detected:
        return None
    side = "" if f.side == "midline" and f.site == "ventricles" else f"{f.side.capitalize()} "
    text = f"{side}{SITE_WORDS[f.site]} hemorrhage {prediction.volume_ml:.1f} ml".strip()
    text = text[0].upper() + text[1:]
    parts = [text]
    if f.ivh_ml >= 0.1 and f.site != "ventricles":
        parts.append(f"IVH {f.ivh_ml:.1f} ml")
    parts.append(shift_words(f.midline_shift_mm))
    return ", ".join(parts)


def shift_words(mls: float | None) -> str:
    if mls is None:
        return "MLS not measured"
    if abs(mls) < 0.5:
        return "MLS 0 mm"
    return f"MLS {abs(mls):.0f} mm to the {'left' if mls > 0 else 'right'}"


def summary_text(prediction: Prediction) -> str | None:
    """The findings sentence of the SR's comments."""
    head = headline(prediction)
    if head is None or prediction.findings is None:
        return None
    return f"{head}; perihematomal oedema {prediction.findings.oedema_ml:.1f} ml."


def findings_measurements(prediction: Prediction) -> list[hd.sr.Measurement]:
    """Intraventricular blood (ml), midline shift (mm, when the septum was seen) and perihematomal
    oedema (ml), each with its own finding site, as measurements of the hemorrhage's own group.

    Not groups of their own: OHIF (3.13) loads every measurement group of an SR by its first
    spatial coordinate and opens no image at all when a group has none."""
    f = prediction.findings
    if f is None or not prediction.hemorrhage_detected:
        return []
    out = [hd.sr.Measurement(name=codes.VOLUME, value=round(f.ivh_ml, 1), unit=codes.MILLILITER,
                             finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SITES["ventricles"],
                                                              laterality=LATERALITY.get(f.side))])]
    if f.midline_shift_mm is not None:
        towards = codes.LEFT if f.midline_shift_mm > 0 else codes.RIGHT
        out.append(hd.sr.Measurement(name=codes.MIDLINE_SHIFT, value=round(abs(f.midline_shift_mm), 1),
                                     unit=codes.MILLIMETER,
                                     finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BRAIN, laterality=towards)]))
    out.append(hd.sr.Measurement(name=codes.EDEMA, value=round(f.oedema_ml, 1), unit=codes.MILLILITER,
                                 finding_sites=finding_sites(f)))
    return out

"""models/model_card.md, rendered from the manifest (and, when given, `hexnode evaluate` output)."""

from __future__ import annotations

from typing import Any

from hexnode.synth import hemodel

SEEDS = """| figure | BioMind (seed 1, real NCCT) | ResNet50 + radiomics (seed 2, real NCCT) |
|---|---|---|
| segmentation IoU slice / patient | 0.863 / 0.831 | — (manual ROI) |
| HE AUC | 0.778 (val 1), 0.780 (val 2) | fused 0.895, DL 0.867, radiomics 0.833 (test n = 47) |
| sensitivity / specificity | 0.818 / 0.601 | — |"""


def _v(x: Any, digits: int = 3) -> str:
    if isinstance(x, dict) and "value" in x:
        lo, hi = x.get("lo"), x.get("hi")
        ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if isinstance(lo, float) and isinstance(hi, float) else ""
        return f"{x['value']:.{digits}f}{ci}" if isinstance(x["value"], float) else "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else ("n/a" if x is None else str(x))


def render(m: dict[str, Any], evaluation: str | None = None) -> str:
    t = m["metrics"].get("test", {})
    files = m["files"]
    size = sum(int(e.get("bytes", 0)) for e in files.values())
    quick = m.get("quick", False)
    pp = m["preprocessing"]["postprocessing"]
    remote = (f", and those < {pp['remote_min_ml']:g} ml more than {pp['remote_reach_mm']:g} mm from the largest "
              "component (stray blobs at the skull base; satellites next to the bleed stay)"
              if pp.get("remote_min_ml") else "")
    lines = [
        f"# hexnode-he model card — version `{m['version']}`",
        "",
        "**Synthetic-trained demonstration models, not for clinical use; retrain on site data with "
        "`hexnode train --data`.**" + (" **QUICK run: untrained placeholder, figures meaningless.**" if quick else ""),
        "",
        "## What it does",
        "- Segmentation: 2D U-Net (strided-conv encoder 512→64, residual dilated bottleneck d = 1, 2, 4, "
        "transposed-conv decoder with additive skips, full-resolution head), 3 HU windows as channels "
        f"{m['preprocessing']['windows_hu']}, Dice + BCE (hypodense blood, < 47 HU, weighted "
        f"{m['training'].get('seg_hypo_weight', 3.0):g}× in the BCE), random 192² crops — 60 % around blood "
        f"({100 * m['training'].get('seg_hypo_share', 0.3):.0f} % of all crops on its hypodense part), 20 % on "
        "blood-like tissue that is not "
        "blood (50–100 HU: skull base, facial soft tissue, falx, sinuses; blood-free slices are also drawn in "
        "proportion to such tissue), 20 % anywhere — with rotation/scale/flip/HU gain/"
        "offset/blur/correlated-noise augmentation; threshold 0.5, per-slice hole filling, 3D components "
        f"< {pp['min_component_ml']} ml removed{remote}. `seg.onnx`, opset 17, dynamic batch; "
        f"max |ORT − torch| = {files['seg.onnx']['max_abs_diff_vs_torch']:.2g}.",
        "- CNN features: small CNN on hematoma-centred crops (slice of largest area ± 1, 0–100 HU, + mask; "
        "square 1.6 × extent + 10 mm so the perihematomal tissue is seen), trained on the HE label; 16-d "
        f"embedding + logit. `cnn.onnx`; max |ORT − torch| = {files['cnn.onnx']['max_abs_diff_vs_torch']:.2g}.",
        f"- Radiomics: pyradiomics 3.0.1, `radiomics.yaml`: Original + LoG σ 1–5 mm + Wavelet, all classes "
        f"({files['radiomics.yaml'].get('features_total', '?')} features), in-plane resampling to 1 mm (slice spacing "
        "kept), B-spline, bin width 5. The CT is cropped to the mask's bounding box + 12 mm before filtering "
        "(pyradiomics then crops again after resampling), which keeps extraction to about a second per case.",
        "- Context features (NCCT expansion markers of the literature, measured on the mask): volume, log volume, "
        "component count, components within 12 mm of the main one and satellite volume (island sign), interior "
        "28–46 HU fraction, hypodense region count and largest share (blend sign), radius spread along 300 evenly "
        "spread rays from the centroid, also after the inertia ellipsoid is made a sphere, and the ellipsoid's axis "
        "ratio (irregularity vs. a smooth flattened bleed), perihematomal ring density (oedema), CSF contact and "
        "blood in components bordered by CSF (intraventricular extension).",
        "- NCCT expansion signs (`hexnode/models/signs.py`): blend (Li 2015), island (Li 2017), swirl (Selariu 2012), "
        "black hole (Li 2016), hypodensities (Boulouis 2016), irregular shape (Barras 2009, quantitative), each present "
        "or absent with its evidence, reported in the SR and on the SC; their measures (`sign_*`) are context features "
        "the booster may read.",
        "- Marker score (`markers.json`): a logistic regression (standardised, C = 1) of HE on "
        f"{len(m['preprocessing']['features'].get('marker_score', []))} of these "
        f"({', '.join(m['preprocessing']['features'].get('marker_score', []))}), fitted on the fusion split; "
        "its logit `marker_logit` is a LightGBM feature (out-of-fold logits for the booster's training rows).",
        f"- Fusion: LightGBM (depth 2, 4 leaves, lr 0.03, early stopping on validation) on context + marker score + "
        "CNN embedding + "
        f"the {len(m['preprocessing']['features']['radiomics_selected'])} radiomics features of largest univariate "
        f"|AUC − 0.5| on the fusion split ({files['lgbm.txt']['features']} features). Platt calibration "
        f"(a = {m['calibration']['a']:.3f}, b = {m['calibration']['b']:.3f}) on {m['calibration']['fitted_on']}. Threshold "
        f"{m['threshold']['value']:.3f} (Youden on validation); sensitivity ≥ 0.90 operating point "
        f"{m['threshold']['sensitivity_0_90']:.3f}.",
        "",
        "## Training data",
        f"{m['training_data']['source']}. Splits by patient: {m['training_data']['splits']} — `segcnn` trains the "
        "U-Net and the CNN, `fusion` trains LightGBM (features from the U-Net's predicted masks, as at inference), `val` "
        "(predicted masks) early-stops, calibrates and sets the thresholds, `test` (predicted masks) is used once.",
        f"Training time: {m['training']['seconds'] / 60:.1f} min wall on 2 shared CPU cores "
        f"(U-Net {m['training']['seg_seconds']:.0f} s, CNN {m['training']['cnn_seconds']:.0f} s budgets). "
        f"models/ size: {size / 2**20:.2f} MB.",
        *_campaign_lines(m.get("campaign")),
        "",
        f"Generative HE model (hexnode.synth.hemodel {hemodel.MODEL_VERSION}; its Bayes-optimal AUC and "
        "prevalence: `hexnode synth --bayes-auc`):",
        "",
        "```",
        hemodel.formula_text(),
        "```",
        "",
        f"## Test split of the training run (n = {t.get('n', 0)}, predicted masks)",
        f"- IoU slice {_v(t.get('iou_slice'))}, patient {_v(t.get('iou_patient'))}",
        f"- HE AUC {_v(t.get('auc'))}; Bayes AUC of the same cases {_v(t.get('bayes_auc'))}; radiomics-only "
        f"{_v(t.get('auc_radiomics'))}, CNN-only {_v(t.get('auc_cnn'))}, volume-only {_v(t.get('auc_volume'))}, "
        f"marker-score-only {_v(t.get('auc_markers'))}",
        f"- ECE {_v(t.get('ece'))}{_ci(t.get('ece_ci'))} (10 bins; the true probability's on the same cases "
        f"{_v(t.get('bayes_ece'))}), sensitivity {_v(t.get('sensitivity'))}, specificity {_v(t.get('specificity'))}",
        "",
    ]
    if evaluation:
        lines += ["## Held-out evaluation (`hexnode evaluate`, fresh seed)", "", "```", evaluation.strip(), "```", ""]
    lines += ["## The seeds, side by side", "", SEEDS, "",
              "The seeds are real patients; these figures are synthetic, where the ceiling (Bayes AUC) is known. "
              "They are not comparable as clinical performance.", ""]
    return "\n".join(lines)


def _ci(ci: Any) -> str:
    """' [lo, hi]' of a 95 % interval stored as a pair; '' for a manifest from before intervals, or
    where there was none (one test case: the manifest stores NaN as null)."""
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, float) and v == v for v in ci):
        return f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return ""


def _campaign_lines(totals: dict[str, Any] | None) -> list[str]:
    """The campaign so far (models/campaign/campaign.json holds every run and its held-out figures)."""
    if not totals:
        return []
    return [
        f"Campaign: {totals['runs']} run(s), U-Net {totals['seg_steps']:,} steps and CNN {totals['cnn_steps']:,} "
        f"steps in all, {totals['wall_hours']:.2f} h wall; the next run continues from these weights with "
        "`hexnode train --init-from models/campaign ...` (learning curve: `models/campaign/campaign.json`).",
    ]

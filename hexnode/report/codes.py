"""Every coded concept the result objects use, in one place (docs/architecture.md §4).

Standard codes come from SNOMED CT (SCT), DICOM (DCM), LOINC (LN), UCUM and IHE (99IHE). Where no
standard concept says exactly what hexnode reports (the probability of hematoma *expansion*, its
threshold, the risk question, "not analysed"), a private scheme `99HEXNODE` is used, so that a
reader never mistakes it for a generic probability of hemorrhage.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

# --- segment (SEG) and finding (SR) ---------------------------------------------------------
HEMORRHAGE = Code("50960005", "SCT", "Hemorrhage")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
BRAIN = Code("12738006", "SCT", "Brain")
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence  # DCM 123110

# --- SR document ----------------------------------------------------------------------------
TITLE = Code("126000", "DCM", "Imaging Measurement Report")
# What the node reads: a non-contrast head CT. LOINC's own code for it (pydicom's dictionary has
# none: its CID 100 list is a baseline, so other procedure codes are allowed).
PROCEDURE_REPORTED = Code("30799-1", "LN", "CT Head WO contrast")
DEVICE_OBSERVER = Code("121007", "DCM", "Device")
COMMENT = Code("121106", "DCM", "Comment")  # TEXT items under TID 1500 "Qualitative Evaluations"

# --- measurements -----------------------------------------------------------------------------
VOLUME = Code("118565006", "SCT", "Volume")
CUBIC_CENTIMETER = Code("cm3", "UCUM", "cubic centimeter")
# Probability and threshold in percent: renderers print the UCUM code, and "1" (no units) was
# read as a literal unit ("0.732 1").
PERCENT = Code("%", "UCUM", "percent")
SQUARE_CENTIMETER = Code("cm2", "UCUM", "square centimeter")
MILLIMETER = codes.UCUM.Millimeter  # the meaning the image library uses too ("mm")
AREA = Code("42798000", "SCT", "Area")
LONG_AXIS = Code("103339001", "SCT", "Long axis")
SHORT_AXIS = Code("103340004", "SCT", "Short axis")
# Kothari's bedside estimate has no standard concept of its own; "Volume of ellipsoid" (DCM 121221)
# is what it approximates but does not say how it was measured, which is what a reader checks.
ABC2_VOLUME = Code("HE-ABC2", "99HEXNODE", "Hematoma volume by ABC/2")

PRIVATE_SCHEME = "99HEXNODE"
HE_PROBABILITY = Code("HE-P", PRIVATE_SCHEME, "Probability of hematoma expansion")
HE_THRESHOLD = Code("HE-THR", PRIVATE_SCHEME, "Hematoma expansion probability threshold")
HE_RISK = Code("HE-RISK", PRIVATE_SCHEME, "Risk of hematoma expansion")
HIGH = Code("75540009", "SCT", "High")
LOW = Code("62482003", "SCT", "Low")
NOT_APPLICABLE = Code("385432009", "SCT", "Not applicable")
RISKS = {"High": HIGH, "Low": LOW, "Not applicable": NOT_APPLICABLE}

# --- "not analysed" -------------------------------------------------------------------------
ANALYSIS_STATUS = Code("HE-STATUS", PRIVATE_SCHEME, "Hematoma expansion analysis status")
NOT_ANALYSED = Code("NOT-ANALYSED", PRIVATE_SCHEME, "Not analysed")

# --- equipment and image references -------------------------------------------------------
# IHE AI Results profile: the AI algorithm is listed in Contributing Equipment with this purpose.
PROCESSING_ALGORITHM = Code("1630", "99IHE", "Processing Algorithm")
SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")

# --- follow-up report (hexnode/report/followup.py) --------------------------------------------
# No standard concept names "hematoma expansion observed on follow-up" or the growth between two
# scans; private codes, with standard value codes (SCT yes / no / decreased).
HE_GROWTH = Code("HE-GROWTH", PRIVATE_SCHEME, "Hematoma volume change since baseline")
HE_GROWTH_PCT = Code("HE-GROWTH-PCT", PRIVATE_SCHEME, "Hematoma relative volume change since baseline")
HE_INTERVAL = Code("HE-INTERVAL", PRIVATE_SCHEME, "Time since baseline scan")
HE_OBSERVED = Code("HE-OBSERVED", PRIVATE_SCHEME, "Hematoma expansion observed")
HE_BASELINE_RISK = Code("HE-BASE-RISK", PRIVATE_SCHEME, "Predicted risk of hematoma expansion at baseline")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
DECREASED = Code("1250004", "SCT", "Decreased")
HOUR = Code("h", "UCUM", "hour")

# --- findings: where the bleed is and how far it reaches (hexnode/report/findings.py) ---------
LEFT = codes.SCT.Left  # 7771000
RIGHT = codes.SCT.Right  # 24028007
BILATERAL = codes.SCT.Bilateral  # 51440002
MIDLINE = codes.SCT.Midline  # 261129000
SITES = {
    "frontal": codes.SCT.FrontalLobe,  # 83251001
    "parietal": codes.SCT.ParietalLobe,  # 16630005
    "temporal": codes.SCT.TemporalLobe,  # 78277001
    "occipital": codes.SCT.OccipitalLobe,  # 31065004
    "basal_ganglia": Code("11000004", "SCT", "Basal ganglia"),  # not in pydicom's dictionary: to verify
    "thalamus": codes.SCT.Thalamus,  # 42695009
    "cerebellum": codes.SCT.Cerebellum,  # 113305005
    "brainstem": codes.SCT.BrainStem,  # 119238007
    "ventricles": codes.SCT.LateralVentricle,  # 66720007
}
EDEMA = codes.SCT.Edema  # 79654002
MILLILITER = Code("ml", "UCUM", "milliliter")
MIDLINE_SHIFT = Code("HE-MLS", PRIVATE_SCHEME, "Midline shift")

# --- NCCT signs of hematoma expansion (hexnode/models/signs.py) --------------------------------
# SNOMED CT and RadLex name none of these signs (searched: blend, island, swirl, black hole sign,
# hypodensities; irregular hematoma shape), so each is a private concept whose meaning is the
# publication's definition, cited in models/model_card.md; its value is SNOMED CT Present / Absent.
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("2667000", "SCT", "Absent")
SIGN_CODES: dict[str, Code] = {
    "blend": Code("HE-SGN-BLEND", PRIVATE_SCHEME, "Blend sign (Li 2015)"),
    "island": Code("HE-SGN-ISLAND", PRIVATE_SCHEME, "Island sign (Li 2017)"),
    "swirl": Code("HE-SGN-SWIRL", PRIVATE_SCHEME, "Swirl sign (Selariu 2012)"),
    "black_hole": Code("HE-SGN-BLKHOLE", PRIVATE_SCHEME, "Black hole sign (Li 2016)"),
    "hypodensity": Code("HE-SGN-HYPODENS", PRIVATE_SCHEME, "Hypodensities (Boulouis 2016)"),
    "irregular": Code("HE-SGN-IRREG", PRIVATE_SCHEME, "Irregular hematoma shape (Barras 2009)"),
}

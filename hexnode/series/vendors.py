"""Kernel and series names as CT vendors write them, and the patterns the selection rules use.

Vendors name the same things differently: a soft-tissue head kernel is STANDARD or SOFT (GE), H30s,
J40s or Hr38 (Siemens), UB (Philips), FC21-FC26 (Canon/Toshiba), B_SOFT_B or H_SOFT (United
Imaging); a bone kernel BONE/BONEPLUS, H70h/Hr64, YA-YC/EB, FC30/FC81, H_BONE/B_SHARP. Their
iterative and deep-learning reconstructions (ASiR, ASiR-V, DLIR/TrueFidelity, SAFIRE, ADMIRE,
iDose, IMR, AIDR 3D, AiCE, KARL) appear in descriptions and say nothing about what a series is.
Dose pages ("Dose Report", "Dose Info", "Patient Protocol", "Exam Summary") and localizers
(Scout, Topogram, Surview, Scanogram) are never analysed.

Names are matched as whole words: a word ends where a letter does not follow, so "iDose" is not
"dose" and "BONEPLUS" needs its own entry, while "B_SOFT_B", "STD+" and "Topogram 0.6" still match
(digits, '_' and punctuation end a word). `NAMES` lists real names with what each must mean; the
tests run every one through the rule engine (tests/route/test_route_vendors.py).
"""

from __future__ import annotations

from dataclasses import dataclass


def words(*alternatives: str) -> str:
    """A regex matching any of `alternatives` (regexes themselves) as a whole word (use under (?i))."""
    return r"(?<![a-z])(?:" + "|".join(alternatives) + r")(?![a-z])"


def starts(*alternatives: str) -> str:
    """A regex matching any of `alternatives` at the start of a word (names run on: "ScoutView")."""
    return r"(?<![a-z])(?:" + "|".join(alternatives) + r")"


def any_of(*patterns: str) -> str:
    """One case-insensitive regex from several (the flag may only lead the whole expression)."""
    return "(?i)" + "|".join(f"(?:{p})" for p in patterns)


# Soft-tissue (brain, standard) kernels: the study-level ranking prefers them.
SOFT_KERNEL = any_of(*[
    words("soft", "smooth", "standard", "stnd", "std", "brain", "head", "cerebrum", "neuro"),  # GE, UIH, Canon AiCE
    r"^(?:H[1-4]\d|J[1-4]\d|[BHQI]r[1-4]\d|Hv[1-4]\d|[BI][1-4]\d[sf])",  # Siemens (older, SAFIRE, ADMIRE)
    r"^(?:U[A-C]|[ABC])$",  # Philips: UA-UC brain, A-C body standard
    r"^FC[0-2]\d",  # Canon/Toshiba: FC01-FC18 body, FC20-FC27 head
])
# Bone, lung and other sharp kernels: never analysed (the model was made for soft-tissue kernels).
SHARP_KERNEL = any_of(*[
    words("bone", "boneplus", "bone ?plus", "lung", "sharp", "edge", "detail", "ultra", "osteo"),  # GE, UIH, AiCE
    r"^(?:H[6-9]\d|B[6-9]\d|[BHQIJ]r?[6-9]\d|[BHQ][a-z][6-9]\d)",  # Siemens: H70h, B70f, Hr64, Br64, J70h, I70f
    r"^(?:Y[A-F]|E[A-C]?|D|L)$",  # Philips: YA-YF, E/EA-EC, D, L
    r"^FC[3-9]\d",  # Canon/Toshiba: FC30/FC31 head bone, FC5x lung, FC8x bone
])
# Descriptions that name a bone or lung reconstruction (whatever the kernel is called).
SHARP_DESCRIPTION = any_of(words("bone", "boneplus", "knochen", "osseous", "lung", "bone window"))
# Dose pages and protocol summaries (a page image, never a stack of slices).
DOSE_PAGE = any_of(words(r"dose[\s_-]*(?:report|info(?:rmation)?|summary|record|sheet|page|screen|sr)",
                         r"radiation[\s_-]*dose", r"patient[\s_-]*protocol", r"exam[\s_-]*summary",
                         r"protocol[\s_-]*summary"))
LOCALIZER = any_of(starts("scout", "topogram", "topo", "surview", "scanogram", "scano", "locali[sz]er", "pilot"))
# Iterative and deep-learning reconstruction names: neutral, listed so that no rule mistakes them.
ITERATIVE = any_of(words("asir", "asir-v", "asirv", "veo", "dlir", "truefidelity", "true fidelity", "safire",
                         "admire", r"idose\d?", r"imr\d?", r"aidr(?: ?3d)?", "aice", "karl(?: ?3d)?", "deep ?recon"))


@dataclass(frozen=True)
class Name:
    """One name as a vendor writes it, and what the selection must make of it."""

    vendor: str  # GE | Siemens | Philips | Canon | UIH
    attr: str  # ConvolutionKernel | SeriesDescription
    text: str
    kind: str  # soft | sharp | neutral | iterative | dose | localizer


def _names(vendor: str, attr: str, kind: str, *texts: str) -> list[Name]:
    return [Name(vendor, attr, t, kind) for t in texts]


K, D = "ConvolutionKernel", "SeriesDescription"
NAMES: tuple[Name, ...] = tuple([
    # GE (LightSpeed, Discovery, Revolution, HiSpeed); ASiR / ASiR-V / DLIR (TrueFidelity) in descriptions
    *_names("GE", K, "soft", "STANDARD", "SOFT", "STD+", "HD STANDARD"),
    *_names("GE", K, "sharp", "BONE", "BONEPLUS", "LUNG", "DETAIL", "EDGE", "HD BONE", "ULTRA"),
    *_names("GE", D, "iterative", "5mm STND ASiR 40%", "HEAD 5mm ASiR-V 50%", "Brain 2.5 DLIR Medium",
            "HEAD TrueFidelity H", "Veo Head"),
    *_names("GE", D, "dose", "Dose Report", "DoseReport"),
    *_names("GE", D, "localizer", "Scout", "SCOUT 0 180", "3 Plane Scout"),
    # Siemens: H/J (older, SAFIRE head), Hr/Qr/Br (ADMIRE, "Hr38h\\3"), I (SAFIRE body)
    *_names("Siemens", K, "soft", "H30s", "H31s", "H40s", "H41s", "J30s", "J37s", "J40s", "Hr36h", "Hr38h\\3",
            "Hr40f", "Qr40d", "Br36d", "Br40f", "I30f\\3", "B30f", "Hv36d"),
    *_names("Siemens", K, "sharp", "H60s", "H70h", "H90s", "J70h", "Hr64h", "Hr68h\\3", "Br64d", "Qr69d", "I70f\\2",
            "B70f", "Hc68"),
    *_names("Siemens", D, "iterative", "Head 5.0 SAFIRE 3", "Head 5.0 Hr38 ADMIRE 3", "Brain 1.0 J40s 3 SAFIRE"),
    *_names("Siemens", D, "dose", "Patient Protocol", "PatientProtocol"),
    *_names("Siemens", D, "localizer", "Topogram 0.6 T20f", "Topogram"),
    # Philips (Brilliance, Ingenuity, iCT, IQon): UA-UC brain, A-C body, YA-YF / E* / D bone, L lung
    *_names("Philips", K, "soft", "UB", "UA", "UC", "B", "A", "C"),
    *_names("Philips", K, "sharp", "YA", "YB", "YC", "YD", "EB", "EC", "D", "L"),
    *_names("Philips", D, "iterative", "STD BRAIN 1MM, iDose", "STD BRAIN 5MM iDose (4)", "STD BRAIN 1MM, IDOSE",
            "Brain 5mm iDose4", "IMR1 Brain Routine", "Brain 3mm IMR"),
    *_names("Philips", D, "dose", "Dose Info", "Exam Summary", "Dose Information"),
    *_names("Philips", D, "localizer", "Surview", "SurView 0.6"),
    # Canon / Toshiba (Aquilion): FC21-FC26 head soft, FC30/FC31 head bone, FC5x lung, FC81 bone
    *_names("Canon", K, "soft", "FC21", "FC23", "FC26", "FC25", "FC03", "FC13"),
    *_names("Canon", K, "sharp", "FC30", "FC31", "FC35", "FC52", "FC81", "FC86"),
    *_names("Canon", K, "soft", "BRAIN", "Brain Std"),  # AiCE writes task names as kernels
    *_names("Canon", K, "sharp", "Body Sharp", "LUNG", "BONE"),
    *_names("Canon", D, "iterative", "Head 5.0 FC26 AIDR 3D STD", "Brain 0.5 AIDR3D Enhanced",
            "Head 5.0 AiCE Brain", "HEAD AiCE BRAIN STD"),
    *_names("Canon", D, "dose", "Dose Info", "Dose Summary"),
    *_names("Canon", D, "localizer", "Scanogram", "SCANO"),
    # United Imaging (uCT): B_/H_ prefixed kernels, KARL 3D iterative
    *_names("UIH", K, "soft", "B_SOFT_B", "B_SOFT_C", "H_SOFT_B", "H_BRAIN", "B_SMOOTH_A"),
    *_names("UIH", K, "sharp", "H_BONE", "B_SHARP_C", "B_LUNG_B", "H_SHARP_B", "B_BONE_B"),
    *_names("UIH", D, "iterative", "Head 5mm KARL 3D", "Brain 1mm KARL", "Head DeepRecon"),
    *_names("UIH", D, "dose", "Dose Report"),
    *_names("UIH", D, "localizer", "Topo", "Localizer"),
])

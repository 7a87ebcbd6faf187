"""The series rules route, the worker and `hexnode run` share: pure functions of headers, no
database, no scheduler, no stage.

header.py (one file's header: `read_header`, `VolumeError`, `MAX_SLICES`), info.py (what selection
knows about one series), rules.py with conditions.py and vendors.py (the rule data, the condition
language, vendors' names), select.py (is this an axial non-contrast head CT, and why not),
ranking.py (which series of a study answers for it), answer.py (the study as the unit of the
answer: which series never count), followup.py (which earlier scan a later one follows).
"""

from hexnode.series.answer import NEVER_CANDIDATE_RULES, Answer, never_candidate
from hexnode.series.conditions import SelectionConfigError
from hexnode.series.followup import Growth, growth, header_patient_key, link, patient_key
from hexnode.series.header import MAX_SLICES, VolumeError, read_header
from hexnode.series.info import SeriesInfo
from hexnode.series.ranking import Choice, Ranking, describe
from hexnode.series.select import Decision, Selector

__all__ = [
    "MAX_SLICES", "NEVER_CANDIDATE_RULES", "Answer", "Choice", "Decision", "Growth", "Ranking", "SelectionConfigError",
    "Selector", "SeriesInfo", "VolumeError", "describe", "growth", "header_patient_key", "link", "never_candidate",
    "patient_key", "read_header",
]

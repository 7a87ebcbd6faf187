"""One series' files → result objects: load.py (DICOM → volume), contracts.py (the typed seam
between the analyser and the report builders), run.py (what the worker and `hexnode run` share),
followup.py (the worker's follow-up step), offline.py / offline_followup.py (`hexnode run`)."""

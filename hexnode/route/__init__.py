"""The route stage: decides, never analyses.

stable.py (APScheduler: when a series is complete, aborted senders, the study's one answer),
select.py with rules/conditions/info/ranking (which series is an axial non-contrast head CT, and
why not), study.py (the study-level decision), followup.py (which earlier scan a later one
follows). It reads the index in the store and enqueues jobs; receive never decides.
"""

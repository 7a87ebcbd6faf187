"""The route stage: decides, never analyses.

stable.py (APScheduler: when a series is complete, aborted senders, the study's one answer),
hold.py (the best series so far analysed at once, its answer held), study.py (the study-level
decision's rows). The rules it decides by are hexnode.series, which the worker shares. It reads
the index in the store and enqueues jobs; receive never decides.
"""

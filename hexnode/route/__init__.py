"""The route stage: decides, never analyses.

service.py (`hexnode route`: the APScheduler job and one check), completion.py (when a series is
complete, aborted senders, late instances re-open), decide.py (the study's one answer, enqueue),
hold.py (the best series so far analysed at once, its answer held), study.py (the study-level
decision's rows). The rules it decides by are hexnode.series, which the worker shares. It reads
the index in the store and enqueues jobs; receive never decides.
"""

"""Notifications: tell the stroke team when the risk is High, and IT when something fails.

``[[notifications]]`` targets in the config (hexnode/config.py ``NotificationTarget``): webhook
(Teams, Slack or plain JSON), e-mail (SMTP, STARTTLS + auth) or HL7 v2 ORU^R01 over MLLP. Rows in
the ``notifications`` table, created in the same transaction as what they report, delivered by
the send stage with back-off and a maximum age, visible in ``hexnode status``, re-sent by
``hexnode resend``. No patient name, ID or birth date unless a target turns a field on.

Public API (for the worker, the sender and the follow-up feature)::

    from hexnode.notify import Finding, Trigger, enqueue
    enqueue(session, cfg, trigger=Trigger.EXPANSION_OBSERVED, series_id=..., revision=...,
            finding=Finding(headline="Hematoma expansion observed on follow-up", positive=True,
                            accession_number=..., study_uid=..., volume_ml=..., facts={"Growth": "+8.1 ml"}))

Modules: triggers (when, and the findings), message (what is said; renderings), state (the
table's life), deliver (the send-stage loop), webhook, mail, hl7v2 (one transport each).
"""

from hexnode.notify.message import Finding, Message
from hexnode.notify.triggers import Trigger, enqueue, on_delivery_failed, on_followup, on_result

__all__ = ["Finding", "Message", "Trigger", "enqueue", "on_delivery_failed", "on_followup", "on_result"]

"""One series' history for GET /series/ID (the status page links each recent series here): its
state and reason, its study's answer, every state change of the series, its jobs, deliveries and
notifications from the ``events`` table, in time order. Named by UID hashes only, as in the logs;
a link into the site's viewer (which shows the study UID) only when `[notify] viewer_url` is set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from hexnode.config import Config
from hexnode.store.db import Event, Job, Notification, Outbox, Result, Series, Store, Study
from hexnode.store.spool import uid_hash


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def series_history(store: Store, series_id: int, cfg: Config | None = None) -> dict[str, Any] | None:
    with store.transaction() as s:
        x = s.get(Series, series_id)
        if x is None:
            return None
        study = s.get(Study, x.study_id)
        jobs = s.execute(select(Job).where(Job.series_id == x.id).order_by(Job.id)).scalars().all()
        deliveries = s.execute(select(Outbox, Result).join(Result, Result.id == Outbox.result_id)
                               .where(Result.series_id == x.id).order_by(Outbox.id)).all()
        notes = s.execute(select(Notification).where(Notification.series_id == x.id)
                          .order_by(Notification.id)).scalars().all()
        keys = [("series", x.id)] + [("job", j.id) for j in jobs] + [("outbox", o.id) for o, _ in deliveries] \
            + [("notification", n.id) for n in notes]
        events = s.execute(select(Event).where(or_(*[(Event.entity == e) & (Event.entity_id == i) for e, i in keys]))
                           .order_by(Event.at, Event.id)).scalars().all()
        viewer = None
        if cfg is not None and cfg.notify.viewer_url and study is not None:
            viewer = f"{cfg.notify.viewer_url.rstrip('/')}/viewer?StudyInstanceUIDs={study.study_uid}"
        return {
            "id": x.id, "series": uid_hash(x.series_uid),
            "study": uid_hash(study.study_uid) if study else None,
            "state": x.state, "reason": x.reason, "revision": x.revision, "modality": x.modality,
            "series_number": x.series_number, "instances": x.instance_count, "calling_ae": x.calling_ae,
            "selected": x.selected, "received_at": _iso(x.first_instance_at), "last_instance_at": _iso(x.last_instance_at),
            "stopped": x.aborted_note,
            "study_answer": study.answer_kind if study else None,
            "jobs": [{"job": j.id, "revision": j.revision, "state": j.state, "attempts": j.attempts, "error": j.error,
                      "created_at": _iso(j.created_at), "finished_at": _iso(j.finished_at),
                      "study_report": j.study_revision is not None} for j in jobs],
            "deliveries": [{"id": o.id, "kind": r.kind, "destination": o.destination, "state": o.state,
                            "attempts": o.attempts, "error": o.last_error, "delivered_at": _iso(o.delivered_at)}
                           for o, r in deliveries],
            "notifications": [{"id": n.id, "trigger": n.trigger, "target": n.target, "state": n.state,
                               "attempts": n.attempts, "error": n.last_error} for n in notes],
            "events": [{"at": _iso(e.at), "entity": e.entity, "entity_id": e.entity_id, "from": e.from_state,
                        "to": e.to_state, "detail": e.detail} for e in events],
            "viewer_url": viewer,
        }

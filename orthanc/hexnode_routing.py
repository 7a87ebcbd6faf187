"""Orthanc auto-routing to hexnode (orthanc-python plugin), through a queue that survives outages
and restarts.

Every *stable* CT series (Orthanc's StableAge after its last instance) is C-STOREd to the DICOM
modality named in the "Hexnode" section of orthanc.json (default "hexnode"). hexnode's own results
(SEG, SR, SC) come back into this Orthanc and must never go out again: only the modalities in
"RouteModalities" are routed (SEG/SR/OT are not CT), and series whose instances were received
from one of "SkipCallingAets" (hexnode's AE title) are skipped as well.

The queue
---------
A series enters the queue when its first instance arrives (waiting for it to become stable) and
leaves it when Orthanc's store job for it has succeeded. The queue lives in Orthanc's own
database (global property "QueueProperty", default 4242), written on every change, so:

* **hexnode down, for any length of time**: the send is an asynchronous job of Orthanc's jobs
  engine (`/modalities/hexnode/store`, visible in Orthanc Explorer's "Jobs"); a failed job is
  submitted again after a back-off of RetryInitialSeconds doubling up to RetryMaxSeconds
  (2, 4, 8 … 60 s) — indefinitely, unless MaxAttempts is set above 0. At most MaxInFlight jobs
  run at once; the rest wait their turn.
* **Orthanc restarted meanwhile**: the queue is read back at start-up; a job Orthanc saved
  (SaveJobs, on by default) carries on, a job it did not keep is submitted again; a series that
  had arrived but was not yet stable when Orthanc stopped (Orthanc forgets that) is examined
  StableAge seconds after the start.
* hexnode stores each SOP instance once, so a send repeated after a lost answer never duplicates
  a result.

GET /hexnode/routing (Orthanc's REST API) lists the queue: series, stage, attempts, last error.

Containers and sites can point the modality elsewhere without editing orthanc.json:
HEXNODE_AET, HEXNODE_HOST, HEXNODE_PORT in Orthanc's environment replace its entry at start-up.
"""

import json
import os
import threading
import time

import orthanc

_config = json.loads(orthanc.GetConfiguration())
_settings = _config.get("Hexnode", {})
MODALITY = _settings.get("Modality", "hexnode")
ROUTE = {m.upper() for m in _settings.get("RouteModalities", ["CT"])}
SKIP_AETS = {a.strip().upper() for a in _settings.get("SkipCallingAets", ["HEXNODE"])}
MAX_ATTEMPTS = int(_settings.get("MaxAttempts", 0))  # 0: never give up
RETRY_INITIAL = float(_settings.get("RetryInitialSeconds", 2.0))
RETRY_MAX = float(_settings.get("RetryMaxSeconds", 60.0))
MAX_IN_FLIGHT = int(_settings.get("MaxInFlight", 4))
QUEUE_PROPERTY = int(_settings.get("QueueProperty", 4242))  # >= 1024: reserved to plugins
STABLE_AGE = float(_config.get("StableAge", 60))
POLL_SECONDS = float(_settings.get("PollSeconds", 1.0))  # how often the queue is looked at

_lock = threading.Lock()
_stop = threading.Event()
# series id -> {"stage": "waiting" | "queued", "due": epoch or None, "attempts": n, "job": id or None,
#               "error": last error}
_queue = {}


def _log(message):
    orthanc.LogWarning("hexnode-routing: " + message)


def _save():
    orthanc.SetGlobalProperty(QUEUE_PROPERTY, json.dumps(_queue, sort_keys=True))


def _load():
    try:
        raw = orthanc.GetGlobalProperty(QUEUE_PROPERTY, "{}")
        loaded = json.loads(raw or "{}")
    except Exception as exc:  # a damaged value must not stop routing of what comes next
        _log(f"queue unreadable ({exc}); starting empty")
        loaded = {}
    return loaded if isinstance(loaded, dict) else {}


def _register_from_env():
    host = os.environ.get("HEXNODE_HOST")
    if not host:
        return
    aet = os.environ.get("HEXNODE_AET", "HEXNODE")
    port = int(os.environ.get("HEXNODE_PORT", "11112"))
    orthanc.RestApiPut("/modalities/" + MODALITY, json.dumps({"AET": aet, "Host": host, "Port": port}))
    SKIP_AETS.add(aet.upper())
    _log(f"modality {MODALITY} -> {aet}@{host}:{port}")


def _should_route(series_id):
    series = json.loads(orthanc.RestApiGet("/series/" + series_id))
    tags = series.get("MainDicomTags", {})
    if tags.get("Modality", "").upper() not in ROUTE:
        return False
    for instance in series.get("Instances", [])[:1]:
        try:
            origin = orthanc.RestApiGet(f"/instances/{instance}/metadata/RemoteAET").decode().strip().upper()
        except Exception:  # metadata absent: uploaded through REST, not from a DICOM peer
            origin = ""
        if origin in SKIP_AETS:
            return False
    return True


def _job(job_id):
    """The job's state and error, or (None, reason) when Orthanc no longer knows it."""
    try:
        job = json.loads(orthanc.RestApiGet("/jobs/" + job_id))
    except Exception:
        return None, "job no longer known to Orthanc"
    return job.get("State"), job.get("ErrorDetails") or job.get("ErrorDescription") or ""


def _submit(series_id):
    answer = json.loads(orthanc.RestApiPost(f"/modalities/{MODALITY}/store", json.dumps(
        {"Resources": [series_id], "Asynchronous": True, "Permissive": False})))
    return answer["ID"]


def _retry(series_id, item, error, now):
    item["attempts"] += 1
    item["job"] = None
    item["error"] = error
    if MAX_ATTEMPTS and item["attempts"] >= MAX_ATTEMPTS:
        _log(f"series {series_id}: giving up after {item['attempts']} attempts ({error}); "
             f"send it again from Orthanc Explorer")
        return False
    delay = min(RETRY_MAX, RETRY_INITIAL * 2 ** (item["attempts"] - 1))
    item["due"] = now + delay
    # every failure of the first few, then one line in twenty: a day-long outage is not a log flood
    if item["attempts"] <= 3 or item["attempts"] % 20 == 0:
        _log(f"series {series_id}: send failed, attempt {item['attempts']} ({error}); retry in {delay:.0f} s")
    return True


def _step(now):
    """One pass over the queue; returns whether it changed."""
    with _lock:
        items = sorted(_queue.items(), key=lambda kv: kv[1].get("due") or 0)
    changed = False
    in_flight = sum(1 for _, it in items if it.get("job"))
    for series_id, item in items:
        if _stop.is_set():
            break
        if item["stage"] == "waiting":
            if item.get("due") is None or now < item["due"]:
                continue  # not stable yet: Orthanc's STABLE_SERIES will come
            try:
                route = _should_route(series_id)
            except Exception:  # deleted meanwhile
                route = False
            with _lock:
                if route:
                    item.update(stage="queued", due=now)
                else:
                    _queue.pop(series_id, None)
            changed = True
            continue
        if item.get("job"):
            state, error = _job(item["job"])
            if state == "Success":
                with _lock:
                    if item.get("again"):  # instances came after the job had started: send once more
                        item.update(again=False, job=None, attempts=0, due=now)
                    else:
                        _queue.pop(series_id, None)
                _log(f"series {series_id} sent to {MODALITY}" + (f" after {item['attempts'] + 1} attempts"
                                                                   if item["attempts"] else ""))
                in_flight -= 1
                changed = True
            elif state == "Failure" or state is None:
                with _lock:
                    if not _retry(series_id, item, error or "failed", now):
                        _queue.pop(series_id, None)
                in_flight -= 1
                changed = True
            continue  # Pending, Running, Paused, Retry: Orthanc's jobs engine has it
        if now < (item.get("due") or 0) or in_flight >= MAX_IN_FLIGHT:
            continue
        try:
            job_id = _submit(series_id)
        except Exception as exc:
            try:
                orthanc.RestApiGet("/series/" + series_id)
            except Exception:  # the series was deleted from Orthanc: nothing to send
                with _lock:
                    _queue.pop(series_id, None)
                changed = True
                continue
            with _lock:
                if not _retry(series_id, item, f"not submitted: {exc}", now):
                    _queue.pop(series_id, None)
            changed = True
            continue
        with _lock:
            item["job"] = job_id
        in_flight += 1
        changed = True
    return changed


def _sender():
    while not _stop.wait(POLL_SECONDS):
        try:
            if _step(time.time()):
                with _lock:
                    _save()
        except Exception as exc:  # a bug or Orthanc shutting down: never a dead routing thread
            _log(f"routing pass failed ({exc})")


def _enqueue(series_id, stage, due):
    with _lock:
        old = _queue.get(series_id)
        if old is not None and old["stage"] == "queued":
            if stage == "queued" and old.get("job"):
                old["again"] = True
                _save()
            return
        _queue[series_id] = {"stage": stage, "due": due, "attempts": 0, "job": None, "error": ""}
        _save()


def _start():
    _register_from_env()
    loaded = _load()
    now = time.time()
    for item in loaded.values():
        if item.get("stage") == "waiting":
            # stable-series events are not kept across a restart: look again once it would be stable
            item["due"] = now + STABLE_AGE
    with _lock:
        _queue.clear()
        _queue.update(loaded)
        _save()
    if loaded:
        _log(f"queue read back: {sum(i['stage'] == 'queued' for i in loaded.values())} series to send, "
             f"{sum(i['stage'] == 'waiting' for i in loaded.values())} waiting to be stable")
    threading.Thread(target=_sender, name="hexnode-routing", daemon=True).start()


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _stop.set()
    elif change_type == orthanc.ChangeType.NEW_SERIES:
        _enqueue(resource_id, "waiting", None)
    elif change_type == orthanc.ChangeType.STABLE_SERIES:
        try:
            route = _should_route(resource_id)
        except Exception as exc:
            _log(f"series {resource_id}: cannot inspect ({exc})")
            route = False
        if route:
            _enqueue(resource_id, "queued", time.time())
        else:
            with _lock:
                if _queue.pop(resource_id, None) is not None:
                    _save()


def get_routing(output, uri, **request):
    if request["method"] != "GET":
        output.SendMethodNotAllowed("GET")
        return
    with _lock:
        body = json.dumps(_queue, indent=2, sort_keys=True)
    output.AnswerBuffer(body, "application/json")


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback("/hexnode/routing", get_routing)

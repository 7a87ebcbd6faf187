"""Orthanc auto-routing to hexnode (orthanc-python plugin).

Every *stable* CT series (Orthanc's StableAge after its last instance) is C-STOREd to the DICOM
modality named in the "Hexnode" section of orthanc.json (default "hexnode"). hexnode's own results
(SEG, SR, SC) come back into this Orthanc and must never go out again: only the modalities in
"RouteModalities" are routed (SEG/SR/OT are not CT), and series whose instances were received
from one of "SkipCallingAets" (hexnode's AE title) are skipped as well.

A failed send (hexnode down, restarting) is retried in a background thread with back-off, up to
"MaxAttempts"; hexnode deduplicates instances it already has, so a retry never duplicates a result.

Containers and sites can point the modality elsewhere without editing orthanc.json:
HEXNODE_AET, HEXNODE_HOST, HEXNODE_PORT in Orthanc's environment replace its entry at start-up.
"""

import json
import os
import queue
import threading

import orthanc

_settings = json.loads(orthanc.GetConfiguration()).get("Hexnode", {})
MODALITY = _settings.get("Modality", "hexnode")
ROUTE = {m.upper() for m in _settings.get("RouteModalities", ["CT"])}
SKIP_AETS = {a.strip().upper() for a in _settings.get("SkipCallingAets", ["HEXNODE"])}
MAX_ATTEMPTS = int(_settings.get("MaxAttempts", 20))

_todo: "queue.Queue[tuple[str, int]]" = queue.Queue()


def _log(message):
    orthanc.LogWarning("hexnode-routing: " + message)


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


def _sender():
    while True:
        series_id, attempt = _todo.get()
        try:
            orthanc.RestApiPost(f"/modalities/{MODALITY}/store",
                                json.dumps({"Resources": [series_id], "Synchronous": True}))
            _log(f"series {series_id} sent to {MODALITY}")
        except Exception as exc:  # hexnode down: back off and try again
            if attempt + 1 >= MAX_ATTEMPTS:
                _log(f"series {series_id}: giving up after {attempt + 1} attempts ({exc})")
                continue
            delay = min(60.0, 2.0 ** attempt)
            _log(f"series {series_id}: send failed ({exc}), retry in {delay:.0f} s")
            threading.Timer(delay, _todo.put, args=((series_id, attempt + 1),)).start()


def on_change(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _register_from_env()
        threading.Thread(target=_sender, name="hexnode-routing", daemon=True).start()
    elif change_type == orthanc.ChangeType.STABLE_SERIES:
        try:
            if _should_route(resource_id):
                _todo.put((resource_id, 0))
        except Exception as exc:
            _log(f"series {resource_id}: cannot inspect ({exc})")


orthanc.RegisterOnChangeCallback(on_change)

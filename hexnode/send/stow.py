"""DICOMweb STOW-RS through dicomweb-client: POST result objects to ``{url}/studies``.

``stow_files(dest, files) -> dict[sop_uid, Outcome]``. The response (DICOM JSON) lists stored
objects in ReferencedSOPSequence (0008,1199) and refused ones in FailedSOPSequence (0008,1198)
with a FailureReason (0008,1197); an object is delivered when it is referenced. 202 (some stored)
and 409 (none stored) carry that list too; any other HTTP error or a network error fails the
whole batch, so the caller backs off. dicomweb-client's own retries are off: the outbox's back-off
(``[send]``) is the one retry policy, and a sender must not sleep through a 503 inside one batch.

HTTPS checks the server's certificate and its name (hexnode/tls.py; ``tls_server_name`` for a
server addressed by IP). Redirects are not followed: a 3xx fails the batch and names where it
pointed (a POST turned into a GET would store nothing; the token must not go to another host).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter

from hexnode.config import Destination
from hexnode.notify.webhook import redirect_refused
from hexnode.send.scu import Outcome, client_ssl
from hexnode.tls import describe

# HTTP statuses whose body still says, object by object, what was stored (PS3.18 10.5.3).
PER_OBJECT_STATUSES = (200, 202, 409)


class _TLSAdapter(HTTPAdapter):
    """HTTPS with the destination's own SSL context (CA file or system CAs, optional client
    certificate, name check on), the same as C-STORE over TLS. `server_name`: the name the
    certificate must carry when it is not the URL's host (urllib3 sends it as SNI and checks it)."""

    def __init__(self, ctx: object, server_name: str) -> None:
        self._ctx = ctx
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["ssl_context"] = self._ctx
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


def _uses_tls(dest: Destination) -> bool:
    return dest.tls or dest.url.startswith("https://")


def client_for(dest: Destination, statuses: list[int] | None = None) -> DICOMwebClient:
    """The DICOMweb client for one destination: its URL, bearer token, TLS and timeout.
    `statuses` collects each response's HTTP status (the result of a store is only its body)."""
    session = requests.Session()
    session.headers["Accept"] = "application/dicom+json"
    session.max_redirects = 0  # a 3xx raises TooManyRedirects with the response: stow_files names it
    if _uses_tls(dest):
        session.verify = dest.tls_ca_file or True
        session.mount("https://", _TLSAdapter(client_ssl(dest), dest.tls_server_name))
    headers = {"Authorization": f"Bearer {dest.bearer_token}"} if dest.bearer_token else None

    def record(resp: requests.Response, *_args: object, **_kwargs: object) -> requests.Response:
        if statuses is not None:
            statuses.append(resp.status_code)
        return resp

    client = DICOMwebClient(dest.url.rstrip("/"), session=session, headers=headers, callback=record,
                            timeout=dest.timeout_seconds)
    client.set_http_retry_params(retry=False)
    return client


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a requests error (e.g. ConnectionRefusedError), for a short text."""
    seen = {id(exc)}
    while True:
        reason = getattr(exc, "reason", None)
        nested = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
        nxt = exc.__cause__ or (reason if isinstance(reason, BaseException) else None) or nested or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _network_error(dest: Destination, exc: requests.RequestException) -> str:
    if isinstance(exc, requests.Timeout):
        return f"STOW-RS {dest.url}: timed out after {dest.timeout_seconds:g} s"
    if isinstance(exc, requests.TooManyRedirects) and exc.response is not None:
        return f"STOW-RS {dest.url}: {redirect_refused(exc.response.status_code, exc.response.headers.get('Location'))}"
    root = _root_cause(exc)
    if isinstance(root, ssl.SSLError):
        return f"STOW-RS {dest.url}: {describe(root, dest.tls_server_name or urlsplit(dest.url).hostname or '')}"
    return f"STOW-RS {dest.url}: {root.strerror if isinstance(root, OSError) and root.strerror else root}"


def _uids(items: object) -> dict[str, str]:
    """SOP Instance UID → failure reason ('' for referenced items) of a response sequence."""
    out: dict[str, str] = {}
    for item in items or []:  # type: ignore[attr-defined]
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if uid:
            out[uid] = str(item.get("FailureReason", "") or "")
    return out


def _response(resp: requests.Response | None) -> Dataset:
    """The DICOM JSON body of a STOW-RS response; an empty dataset when there is none or it is not JSON."""
    if resp is None or not resp.content:
        return Dataset()
    try:
        doc = resp.json()
        if isinstance(doc, list):
            doc = doc[0] if doc else {}
        return Dataset.from_json(doc)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Dataset()


def stow_files(dest: Destination, files: dict[str, Path]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    datasets = []
    sent = []
    for uid, path in files.items():
        try:
            datasets.append(dcmread(path))
            sent.append(uid)
        except (OSError, InvalidDicomError) as exc:
            outcomes[uid] = Outcome(False, f"cannot read {path.name}: {type(exc).__name__}")
    if not datasets:
        return outcomes
    statuses: list[int] = []
    try:
        doc = client_for(dest, statuses).store_instances(datasets)
        status = statuses[-1] if statuses else 200
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status not in PER_OBJECT_STATUSES:
            for uid in sent:
                outcomes[uid] = Outcome(False, f"STOW-RS HTTP {status}")
            return outcomes
        doc = _response(exc.response)
    except requests.RequestException as exc:
        why = _network_error(dest, exc)
        for uid in sent:
            outcomes[uid] = Outcome(False, why)
        return outcomes
    referenced = _uids(doc.get("ReferencedSOPSequence"))
    failed = _uids(doc.get("FailedSOPSequence"))
    for uid in sent:
        if uid in referenced:
            outcomes[uid] = Outcome(True, f"STOW-RS HTTP {status}")
        elif uid in failed:
            outcomes[uid] = Outcome(False, f"STOW-RS refused, FailureReason {failed[uid] or '?'}")
        else:
            outcomes[uid] = Outcome(False, f"STOW-RS HTTP {status}: object not in the response")
    return outcomes

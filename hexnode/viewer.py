"""OHIF, the radiologist's web viewer, served same-origin with Orthanc's DICOMweb.

`make install` (scripts/bootstrap.sh) unpacks the pinned, prebuilt `@ohif/app` from the npm
registry into var/ohif/ once; no build step. This small server serves that `dist/`, writes its
`app-config.js` (one DICOMweb data source at this origin), and passes `/dicom-web/` and `/wado`
through to Orthanc with the browser's Host header, so that the BulkDataURIs Orthanc writes point
back here. Every response carries COOP/COEP: OHIF's wasm decoders need cross-origin isolation.
Loopback only, like the demo's Orthanc; a site runs its own OHIF (orthanc/README.md).
"""

from __future__ import annotations

import mimetypes
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"  # pinned in scripts/bootstrap.sh too
OHIF_DIST = REPO / "var" / "ohif" / f"app-{OHIF_VERSION}" / "dist"
PROXIED = ("/dicom-web/", "/wado")
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Hop-by-hop headers (RFC 9110 7.6.1) and those this server sets itself.
_SKIP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                 "proxy-authenticate", "proxy-authorization", "content-length", "server", "date"}

APP_CONFIG = """/* written by hexnode.viewer: OHIF on the demo's Orthanc (same origin) */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'hexnode demo Orthanc',
        name: 'orthanc',
        wadoUriRoot: window.location.origin + '/wado',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      },
    },
  ],
};
"""


def study_url(viewer_url: str, study_uid: str) -> str:
    """OHIF opened on one study: the link the demo prints and notifications carry (hexnode/notify)."""
    return f"{viewer_url.rstrip('/')}/viewer?StudyInstanceUIDs={quote(study_uid, safe='.')}"


def ohif_installed(dist: Path = OHIF_DIST) -> bool:
    return (dist / "index.html").is_file()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # URLs carry study UIDs; the demo's own output says what happened

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, **ISOLATION}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = urlsplit(self.path).path
        if path.startswith(PROXIED):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, APP_CONFIG.encode(), {"Content-Type": "text/javascript", "Cache-Control": "no-store"})
        else:
            self._static(path)

    def _static(self, path: str) -> None:
        dist = self.server.dist
        target = (dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(dist) or not target.is_file():
            target = dist / "index.html"  # the app's own routes (/viewer, /segmentation, ...)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            ctype = "application/wasm"
        self._send(200, target.read_bytes(), {"Content-Type": ctype})

    def _proxy(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _SKIP_HEADERS}
        req = urllib.request.Request(self.server.orthanc_url + quote(self.path, safe="/?&=%:;,+"), headers=headers,
                                     method=self.command)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, body, got = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, body, got = exc.code, exc.read(), exc.headers
        except OSError:
            self._send(502, b"Orthanc is not answering", {"Content-Type": "text/plain"})
            return
        self._send(status, body, {k: v for k, v in got.items() if k.lower() not in _SKIP_HEADERS})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: Path, orthanc_url: str) -> None:
        super().__init__(address, _Handler)
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")


@dataclass
class ViewerServer:
    """OHIF + Orthanc DICOMweb on one loopback origin, in a background thread."""

    orthanc_url: str
    port: int = 0
    host: str = "127.0.0.1"
    dist: Path = OHIF_DIST
    _server: _Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> ViewerServer:
        if not ohif_installed(self.dist):
            raise FileNotFoundError(f"OHIF {OHIF_VERSION} is not unpacked in {self.dist}: run `make install`")
        self._server = _Server((self.host, self.port), self.dist, self.orthanc_url)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def study_url(self, study_uid: str) -> str:
        return study_url(self.url, study_uid)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

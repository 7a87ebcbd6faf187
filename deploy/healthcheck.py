"""Container healthcheck of `hexnode receive`: a C-ECHO to our own SCP, at the AE title, port and
calling AE the settings file gives (so it stays right when a site changes them). With `--web`, of
`hexnode web`: GET /healthz at the [http] port.

Exit 0 when the SCP answers Success. With DICOM TLS on, only that the port accepts a connection
(the echo would need a client certificate the container may not have).
"""

from __future__ import annotations

import socket
import sys
import urllib.request

from pynetdicom import AE

from hexnode.config import load_config

VERIFICATION = "1.2.840.10008.1.1"


def web(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:  # noqa: S310
        return 0 if resp.status == 200 and resp.read().strip() == b"ok" else 1


def main() -> int:
    cfg = load_config()  # HEXNODE_CONFIG, as the stage reads it
    if "--web" in sys.argv[1:]:
        return web(cfg.http.port)
    host = cfg.dicom.bind if cfg.dicom.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if cfg.dicom.tls.enabled:
        with socket.create_connection((host, cfg.dicom.port), timeout=5):
            return 0
    calling = cfg.dicom.allowed_calling_aes[0] if cfg.dicom.allowed_calling_aes else "HEALTHCHECK"
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(host, cfg.dicom.port, ae_title=cfg.dicom.ae_title)
    if not assoc.is_established:
        return 1
    try:
        status = assoc.send_c_echo()
        return 0 if status and status.Status == 0 else 1
    finally:
        assoc.release()


if __name__ == "__main__":
    sys.exit(main())

"""Plain pynetdicom Storage SCP for bench/receive.py: the library's own receive path with chunked
receive (each dataset streamed to a temp file) and ``maximum_pdu_size = 0``, no hexnode code.

    python bench/receive_pynetdicom.py PORT OUT_DIR

The temp files are made in OUT_DIR, so storing an instance is a rename, as in hexnode's spool.
pynetdicom's per-message handler logging is off (``LOG_HANDLER_LEVEL = "none"``, as hexnode sets
it), so what differs from hexnode is only hexnode's own code and its fast path.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from pynetdicom import AE, StoragePresentationContexts, _config, evt


def main() -> int:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True  # pynetdicom's documented config module
    _config.LOG_HANDLER_LEVEL = "none"
    tempfile.tempdir = str(out)

    def on_store(event: evt.Event) -> int:
        path = Path(event.dataset_path)
        os.replace(path, out / f"{event.request.AffectedSOPInstanceUID}.dcm")
        return 0x0000

    ae = AE(ae_title="PYNETDICOM")
    ae.maximum_pdu_size = 0
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.shutdown()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sys.exit(main())

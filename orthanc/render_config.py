#!/usr/bin/env python3
"""Render orthanc.json for a container: `render_config.py IN OUT`, overrides from the environment.

Orthanc's own ${VAR} substitution cannot produce booleans or numbers, so containers run this first.
`ORTHANC__<Key>=<JSON value>` sets a top-level key, e.g. `ORTHANC__RemoteAccessAllowed=true`,
`ORTHANC__RegisteredUsers={"admin": "secret"}`; a value that is not JSON is taken as a string.
Standard library only: it runs in the Orthanc image, not hexnode's.
"""

import json
import os
import sys


def main(argv):
    src, dst = argv[1], argv[2]
    with open(src) as f:
        config = json.load(f)
    for name, raw in os.environ.items():
        if not name.startswith("ORTHANC__"):
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        config[name[len("ORTHANC__"):]] = value
    with open(dst, "w") as f:
        json.dump(config, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

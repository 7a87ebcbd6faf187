#!/usr/bin/env python3
"""Render orthanc.json for a container: `render_config.py IN OUT`, overrides from the environment.

Orthanc's own ${VAR} substitution cannot produce booleans or numbers, so containers run this first.
`ORTHANC__<Key>=<JSON value>` sets a top-level key, e.g. `ORTHANC__RemoteAccessAllowed=true`,
`ORTHANC__RegisteredUsers={"admin": "secret"}`; a value that is not JSON is taken as a string.
`__` between names reaches into a section: `ORTHANC__DicomModalities__ct1={"AET": "CT1", "Host":
"10.1.2.3", "Port": 104}` registers one more modality and keeps the others.
Standard library only: it runs in the Orthanc image, not hexnode's.
"""

import json
import os
import sys


def apply(config, name, raw):
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    *sections, key = name.split("__")
    node = config
    for section in sections:
        if not isinstance(node.get(section), dict):
            node[section] = {}
        node = node[section]
    node[key] = value


def main(argv):
    src, dst = argv[1], argv[2]
    with open(src) as f:
        config = json.load(f)
    # shorter names first: a whole section is set before the keys inside it
    for name, raw in sorted(os.environ.items(), key=lambda kv: kv[0].count("__")):
        if name.startswith("ORTHANC__") and len(name) > len("ORTHANC__"):
            apply(config, name[len("ORTHANC__"):], raw)
    with open(dst, "w") as f:
        json.dump(config, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

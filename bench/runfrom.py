"""Run another copy of the `hexnode` package (e.g. `git archive <commit> hexnode | tar -x -C DIR`)
with this checkout's virtual environment, for before/after figures measured by the same harness.

The venv installs this checkout in editable mode through an import hook that comes before
PYTHONPATH, in every process (the indexer is a spawned child, which imports hexnode afresh). So
:func:`env_for` writes a ``sitecustomize.py`` beside DIR that removes that hook at start-up, and
puts both on PYTHONPATH (and PYTHONSAFEPATH, so that a checkout in the working directory does not
win either); every process started with that environment imports DIR's hexnode.
"""

from __future__ import annotations

import os
from pathlib import Path

_SITE = '''import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
'''


def env_for(package_dir: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for processes that must import hexnode from `package_dir` (which holds
    the `hexnode/` folder)."""
    root = Path(package_dir).resolve()
    if not (root / "hexnode" / "__init__.py").is_file():
        raise FileNotFoundError(f"{root} has no hexnode package")
    site = root / ".runfrom-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(root)])
    env["PYTHONSAFEPATH"] = "1"  # not the working directory's hexnode either
    return env

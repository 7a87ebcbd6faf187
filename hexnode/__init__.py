"""hexnode: a DICOM inference node that predicts hematoma expansion from head NCCT.

The bundled models are trained on synthetic data only: not for clinical use.

The version has one source, pyproject.toml's `[project] version`: read from it in a source
checkout (an editable install's metadata is only as new as its last `pip install`), else from the
installed package's metadata.
"""

from __future__ import annotations


def _version() -> str:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
        if project.get("name") == "hexnode":
            return str(project["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hexnode")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

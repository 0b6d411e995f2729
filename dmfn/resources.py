"""Where the package's data files are, for an editable install and a wheel alike.

Every lookup of a file shipped with dmfn goes through here (``importlib.resources``), never
through paths relative to a source file.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: Environment variable naming another folder of Triton model templates (``model.py`` files).
TEMPLATE_ENV = "DMFN_MODEL_REPOSITORY_TEMPLATE"
DEMO_CHECKPOINT = "dmfn_demo.pt"


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def demo_checkpoint() -> Path:
    """The committed demo model (``models/dmfn_demo.pt``; how it was made: models/README.md)."""
    return _package_dir("dmfn.models") / DEMO_CHECKPOINT


def model_repository_templates() -> Path:
    """The folder of the committed Triton model templates (``model_repository/``), or
    ``$DMFN_MODEL_REPOSITORY_TEMPLATE`` when set."""
    override = os.environ.get(TEMPLATE_ENV)
    return Path(override) if override else _package_dir("dmfn.model_repository")


def data_file(package: str, name: str) -> Path:
    """A data file shipped in the ``data/`` folder of a dmfn package (e.g. ``dmfn.contract``)."""
    return _package_dir(package) / "data" / name


def taxonomy_file(name: str = "taxonomy_paper.csv") -> Path:
    """A taxonomy data file of the contract layer (``contract/data/``)."""
    return data_file("dmfn.contract", name)


def cache_dir() -> Path:
    """A per-user folder for generated files (``$XDG_CACHE_HOME/dmfn``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dmfn"

"""requirements/lock.txt pins each package once, exactly (``make setup`` installs it)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"


def normalised(name: str) -> str:
    """A distribution name as PEP 503 compares them: case and runs of -_. do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> list[tuple[str, str]]:
    """(name, version) of every line of the lock that is not a comment or blank."""
    out = []
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"{LOCK.name}: {line!r} is not an exact pin (name==version)"
            out.append((name.strip(), version.strip()))
    return out


def test_normalised_names_follow_pep_503() -> None:
    assert normalised("mypy_extensions") == normalised("Mypy-Extensions") == "mypy-extensions"
    assert normalised("zope.interface") == normalised("zope__interface") == "zope-interface"
    assert normalised("flask-cors") != normalised("flask")


def test_lock_lists_each_package_once() -> None:
    counts = Counter(normalised(name) for name, _ in pins())
    repeated = sorted(name for name, n in counts.items() if n > 1)
    assert not repeated, f"{LOCK.name} lists these packages more than once: {repeated}"
    assert len(counts) > 50  # the whole environment, not an empty or truncated file

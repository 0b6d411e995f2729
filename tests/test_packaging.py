"""A plain wheel install imports the same packages as the editable install of `make setup`."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import dmfn, dmfn.preprocess._core, dmfn.preprocess, dmfn.client.sdk, dmfn.training.models, dmfn.serving
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.serving.repository import template_dir
assert len(load_taxonomy()) == 20
assert (template_dir() / "preprocess" / "1" / "model.py").is_file(), template_dir()
print(dmfn.__file__); print(dmfn.preprocess._core.__file__); print(template_dir())
"""


@pytest.mark.slow
def test_wheel_imports_like_editable(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps",
         "-q", "-w", str(wheels), f"--config-settings=build-dir={tmp_path / 'build'}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = wheels.glob("dmfn-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # -S: no site hooks, so the editable install's import redirect is not active; the venv's
    # site-packages comes after the wheel's files only to provide numpy, torch, ...
    site_packages = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), site_packages])}
    result = subprocess.run(
        [sys.executable, "-S", "-c", CHECK], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    files = result.stdout.split()
    assert all(f.startswith(str(target)) for f in files), files

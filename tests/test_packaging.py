"""A plain wheel (not the editable install of `make setup`) is the whole product: it imports the
same packages, carries its package data (the demo model, the Triton templates, the taxonomy) and
runs `dmfn demo` from a folder outside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # only to build the wheel from

CHECK = """
import dmfn, dmfn.preprocess._core, dmfn.preprocess, dmfn.client.sdk, dmfn.training.models, dmfn.serving
from dmfn.contract.taxonomy import load_taxonomy
from dmfn.resources import demo_checkpoint
from dmfn.serving.repository import template_dir
from dmfn.preprocess.gpu import CUDA_KERNELS, cuda_source_dir
sources, include = cuda_source_dir()  # the CuPy backend's CUDA sources travel in the wheel
assert sources == include and all((sources / f).is_file() for f in CUDA_KERNELS), sources
assert len(load_taxonomy()) == 20
assert (template_dir() / "preprocess" / "1" / "model.py").is_file(), template_dir()
assert demo_checkpoint().is_file(), demo_checkpoint()
print(dmfn.__file__); print(dmfn.preprocess._core.__file__); print(template_dir())
print(demo_checkpoint()); print(sources)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps",
         "-q", "-w", str(tmp / "wheels"), f"--config-settings=build-dir={tmp / 'build'}"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (built,) = (tmp / "wheels").glob("dmfn-*.whl")
    return built


@pytest.mark.slow
def test_wheel_imports_like_editable(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
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


@pytest.mark.slow
def test_dmfn_demo_runs_from_a_wheel_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    """`pip install` of the wheel into a new virtual environment, then `dmfn demo` run from a
    folder outside the checkout. The venv gets the wheel's `dmfn` and nothing else of the
    project; its third-party dependencies (torch, numpy, Triton, ...) are the project venv's,
    reached through a path file (its editable-install hook is a .pth file of that folder, which
    Python does not run from an added path, so it stays inactive)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", purelib, str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run(
        [str(python), "-c", "import dmfn; print(dmfn.__file__)"],
        capture_output=True, text=True, cwd=outside, env=env, check=True,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(purelib), where
    demo = subprocess.run(
        [str(python), "-m", "dmfn.cli", "demo", "--out", str(outside / "demo"),
         "--patients", "3"],
        capture_output=True, text=True, cwd=outside, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "malignant probability" in demo.stdout
    # The served probabilities equal the checkpoint's in PyTorch (its temperature applied).
    parity = re.search(r"served PROBS vs in-process PyTorch: max \|difference\| (\S+)", demo.stdout)
    assert parity is not None and float(parity.group(1)) < 1e-4, demo.stdout[-3000:]
    assert f"model: {purelib}" in demo.stdout  # the wheel's own demo model, not the checkout's

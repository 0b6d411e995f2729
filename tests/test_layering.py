"""The folder tree is the import tree: each top-level source folder is one layer of the package
`dmfn` and imports only the layers below it (docs/architecture.md).

Checked two ways: statically, every `import` of every file of every folder (the Triton
``model.py`` files included) against the layer's allowed list; and at run time, importing each
layer with the layers it must not use made unimportable (torch, the C++ extension, ...).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The folder -> package map has one source: pyproject.toml's [tool.scikit-build.wheel.packages]
#: (what the wheel installs). This file keeps only the rules: for each package, the dmfn packages
#: and third-party modules it may import. ``dmfn`` (the version) and ``dmfn.resources`` (package
#: data lookup, stdlib only) are leaves that every layer may use.
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES: dict[str, str] = {
    package.replace("/", "."): folder
    for package, folder in PYPROJECT["tool"]["scikit-build"]["wheel"]["packages"].items()
}
LEAVES = {"dmfn", "dmfn.resources"}
RULES: dict[str, tuple[set[str], set[str]]] = {
    "dmfn.contract": (set(), {"numpy"}),
    # highdicom: DICOM SEG masks in and SR reports out; dicomweb_client: the PACS (DICOMweb);
    # isal: ISA-L's inflate for .nii.gz files.
    "dmfn.client": (
        {"dmfn.contract"},
        {"numpy", "pydicom", "nibabel", "nrrd", "tritonclient", "tqdm", "highdicom",
         "dicomweb_client", "requests", "isal"},
    ),
    # cupy: the optional GPU backend (imported lazily by dmfn.preprocess.gpu).
    "dmfn.preprocess": ({"dmfn.contract"}, {"numpy", "cupy"}),
    "dmfn.synth": ({"dmfn.contract", "dmfn.client"}, {"numpy", "scipy", "tqdm"}),
    "dmfn.serving": ({"dmfn.contract", "dmfn.client"}, {"numpy", "tritonclient", "pytriton"}),
    "dmfn.model_repository": (
        {"dmfn.contract", "dmfn.preprocess"},
        {"numpy", "onnxruntime", "triton_python_backend_utils"},
    ),
    "dmfn.evaluation": ({"dmfn.contract", "dmfn.client"}, {"numpy", "scipy", "matplotlib", "tqdm"}),
    "dmfn.training": (
        {"dmfn.contract", "dmfn.client", "dmfn.preprocess", "dmfn.synth", "dmfn.serving",
         "dmfn.evaluation"},
        # captum: Grad-CAM heat maps (training/explain.py)
        {"numpy", "scipy", "torch", "onnx", "onnxruntime", "tensorrt", "tqdm", "matplotlib",
         "captum"},
    ),
    # package data only: the committed demo model
    "dmfn.models": (set(), set()),
}  # fmt: skip
#: The top package `dmfn` (the command line, dmfn demo, dmfn predict) may import every layer, so
#: it has no rule to check.
TOP = "dmfn"
LAYERS: dict[str, tuple[str, set[str], set[str]]] = {
    PACKAGES[package]: (package, *RULES[package]) for package in RULES
}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _allowed(module: str, own: str, dmfn_allowed: set[str], third_party: set[str]) -> bool:
    top = module.split(".")[0]
    if module.startswith("dmfn"):
        if module in LEAVES or module == own or module.startswith(own + "."):
            return True
        return any(module == a or module.startswith(a + ".") for a in dmfn_allowed)
    return top in STDLIB or top in third_party


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_each_folder_imports_only_the_layers_below(folder: str) -> None:
    own, dmfn_allowed, third_party = LAYERS[folder]
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    wrong = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in _imports(path)
        if not _allowed(module, own, dmfn_allowed, third_party)
    }
    assert not wrong, sorted(wrong)


def test_every_package_of_the_wheel_has_its_rules() -> None:
    """A package added to pyproject.toml must be given its place in RULES (and back)."""
    assert set(PACKAGES) == set(RULES) | {TOP}


def _architecture_table() -> dict[str, str]:
    """docs/architecture.md's layer table as package -> folder (the first two columns)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1].startswith("dmfn"):
            rows[cells[1]] = cells[0].rstrip("/")
    return rows


def test_the_architecture_table_names_the_packages_of_pyproject() -> None:
    """The map in docs/architecture.md is the map of pyproject.toml: same packages, same folders."""
    assert _architecture_table() == PACKAGES


def test_every_source_folder_is_a_known_layer() -> None:
    """A new top-level folder with Python code must be given its place above."""
    known = {f.split("/")[0] for f in LAYERS} | {"dmfn", "tests", "benchmarks", "loadtests"}
    known |= {"scripts", "docs", "models", "requirements", "build", "runs", "data"}
    folders = {p.relative_to(ROOT).parts[0] for p in ROOT.glob("*/**/*.py")}
    folders = {f for f in folders if not f.startswith(".")}
    assert folders <= known, folders - known


BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def __init__(self, names):
            self.names = names
        def find_spec(self, name, path=None, target=None):
            if any(name == n or name.startswith(n + ".") for n in self.names):
                raise ImportError(f"layering: {name} must not be imported here")
            return None

    sys.meta_path.insert(0, Block(BLOCKED))
    import importlib
    for module in MODULES:
        importlib.import_module(module)
    print("ok")
    """
)

CASES = {
    "contract without torch, the extension or any other layer": (
        ["torch", "dmfn.preprocess", "dmfn.client", "dmfn.serving", "dmfn.training", "scipy"],
        ["dmfn.contract.schema", "dmfn.contract.taxonomy", "dmfn.contract.params",
         "dmfn.contract.study", "dmfn.contract.wire", "dmfn.contract.limits",
         "dmfn.contract.server", "dmfn.contract.orientation", "dmfn.resources"],
    ),
    "client without torch, preprocess or serving": (
        ["torch", "dmfn.preprocess", "dmfn.serving", "dmfn.training", "dmfn.synth"],
        ["dmfn.client", "dmfn.client.sdk", "dmfn.client.io", "dmfn.client.predict"],
    ),
    "preprocess, synth and serving without torch": (
        ["torch", "dmfn.training"],
        ["dmfn.preprocess", "dmfn.synth.cohort", "dmfn.serving", "dmfn.serving.cli",
         "dmfn.serving.repository", "dmfn.serving.service"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_direction_at_run_time(case: str) -> None:
    blocked, modules = CASES[case]
    code = f"BLOCKED = {blocked!r}\nMODULES = {modules!r}\n" + BLOCKER
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"

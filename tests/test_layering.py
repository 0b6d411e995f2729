"""The dependency direction of DESIGN.md: dmfn.client <- dmfn.preprocess <- dmfn.training.

The client (SDK, loaders, predict CLI) must import without torch and without the C++ extension;
the serving package and the Triton models' imports must not pull in torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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
    "client without torch, preprocess or serving": (
        ["torch", "dmfn._preprocess", "dmfn.preprocess", "dmfn.serving", "dmfn.training"],
        ["dmfn.client", "dmfn.client.sdk", "dmfn.client.io", "dmfn.client.predict",
         "dmfn.client.taxonomy", "dmfn.client.contract", "dmfn.client.roi"],
    ),
    "preprocess and serving without torch": (
        ["torch", "dmfn.training"],
        ["dmfn.preprocess", "dmfn.serving", "dmfn.serving.serve", "dmfn.serving.repository"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_direction(case: str) -> None:
    blocked, modules = CASES[case]
    code = f"BLOCKED = {blocked!r}\nMODULES = {modules!r}\n" + BLOCKER
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"

"""The .pyi stub of dmfn.preprocess._core names every function of the extension with its parameters."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dmfn.preprocess
import dmfn.preprocess._core as ext

STUB = Path(dmfn.preprocess.__file__).with_name("_core.pyi")


def _stub_functions() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text())
    return {
        node.name: [a.arg for a in node.args.args]
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }


def _extension_functions() -> dict[str, list[str]]:
    out = {}
    for name in dir(ext):
        obj = getattr(ext, name)
        if name.startswith("_") or not callable(obj):
            continue
        first = (obj.__doc__ or "").splitlines()[0]
        params = re.match(rf"{name}\((.*)\) ->", first)
        assert params, f"no pybind11 signature for {name}: {first!r}"
        # parameter names are the identifiers before ':' at nesting depth 0
        names, depth, token = [], 0, ""
        for ch in params.group(1) + ",":
            if ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            if ch == "," and depth == 0:
                names.append(token.split(":")[0].strip())
                token = ""
            else:
                token += ch
        out[name] = [n for n in names if n]
    return out


def test_stub_matches_extension() -> None:
    assert STUB.is_file()
    assert _stub_functions() == _extension_functions()

"""The ``dmfn`` command: a thin dispatcher to each sub-command's own ``main(argv)``.

Sub-commands are imported only when run, so ``dmfn predict`` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (the command's module, one-line help). Each module holds only the command's parser,
#: ``build_parser() -> argparse.ArgumentParser``, and ``main(argv) -> int``, which maps the
#: options to one API call: ``<layer>/cli.py`` for a layer's command, ``<layer>/<name>_cli.py``
#: where a layer has another.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("dmfn.demo_cli", "the main job: cohort -> model -> Triton -> a prediction"),
    "synth": ("dmfn.synth.cli", "generate a synthetic mediastinal CT + CTC cohort"),
    "train": ("dmfn.training.cli", "train DMFN / CT-only / tabular-only models"),
    "export": (
        "dmfn.training.export_cli",
        "export a checkpoint to ONNX / TensorRT + Triton repository",
    ),
    "evaluate": (
        "dmfn.evaluation.cli",
        "statistics (equal to R pROC), reader study, cohort table, HTML report",
    ),
    "serve": ("dmfn.serving.cli", "start Triton Inference Server on a model repository"),
    "keys": ("dmfn.serving.keys_cli", "create, list and revoke the API keys of dmfn serve"),
    "predict": (
        "dmfn.predict_cli",
        "predictions from a running server or a checkpoint; CSV for evaluate",
    ),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: dmfn COMMAND [options]   (dmfn COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from dmfn import __version__

        print(f"dmfn {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dmfn: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

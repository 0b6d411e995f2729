"""One shape for every ``dmfn`` command: a module with ``build_parser()`` and ``main(argv)``
(``dmfn.cli.COMMANDS``), ``--overwrite`` wherever a result can be replaced (its old spelling
``--force`` hidden, working, and saying it is renamed), and the same flag for the same thing."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from dmfn.cli import COMMANDS
from dmfn.cli import main as dmfn_main

#: The commands whose result can be replaced, with the arguments they need besides --overwrite.
REPLACE_RESULTS: dict[str, list[str]] = {
    "synth": ["--out", "o"],
    "train": ["--manifest", "m.csv", "--out", "o"],
    "export": ["--checkpoint", "c.pt", "--out", "o"],
    "evaluate": ["--predictions", "p.csv", "--out", "o"],
    "predict": ["--manifest", "m.csv", "--out", "p.csv"],
}
#: One spelling per thing: the destination of each of these options is its flag without "--".
SHARED = ("out", "manifest", "checkpoint", "url", "protocol", "seed", "workers")


def _parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(COMMANDS[name][0]).build_parser()


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option of ``parser``, those of its sub-commands included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _options(sub)
        elif action.option_strings:
            found.append(action)
    return found


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_module_holds_a_parser_and_main(name: str) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    assert module.__name__.endswith("cli"), module.__name__
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.prog == f"dmfn {name}"
    assert callable(module.main)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_overwrite_never_force(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        dmfn_main([name, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--force" not in text
    assert ("--overwrite" in text) == (name in REPLACE_RESULTS)
    assert "%%" not in text  # a description is not %-formatted: "95 %%" would print as is


@pytest.mark.parametrize("name", sorted(REPLACE_RESULTS))
def test_overwrite_and_its_hidden_old_name(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser(name)
    needed = REPLACE_RESULTS[name]
    assert parser.parse_args(needed).overwrite is False
    assert parser.parse_args([*needed, "--overwrite"]).overwrite is True
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*needed, "--force"]).overwrite is True
    err = capsys.readouterr().err
    assert err == (
        f"dmfn {name}: --force is renamed to --overwrite; --force will be removed in the next "
        "release\n"
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_same_flag_for_the_same_thing(name: str) -> None:
    for action in _options(_parser(name)):
        if action.dest in SHARED and action.help != argparse.SUPPRESS:
            assert f"--{action.dest.replace('_', '-')}" in action.option_strings, (
                name,
                action.option_strings,
            )
        for option in action.option_strings:
            for word in SHARED:
                if option.startswith("--") and option[2:] in {f"{word}-dir", f"{word}put"}:
                    pytest.fail(f"dmfn {name} {option}: spell it --{word}")


def test_force_still_replaces_a_cohort(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The old spelling does what --overwrite does, end to end (a dry run: seconds)."""
    out = tmp_path / "cohort"
    argv = ["synth", "--dry-run", "--patients", "3", "--readers", "0", "--out", str(out)]
    assert dmfn_main(argv) == 0
    assert dmfn_main(argv) == 2
    assert "pass --overwrite to replace a previous cohort" in caplog.text
    assert dmfn_main([*argv, "--force"]) == 0
    assert "--force is renamed to --overwrite" in capsys.readouterr().err
    assert dmfn_main([*argv, "--overwrite"]) == 0

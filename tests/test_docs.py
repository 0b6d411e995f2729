"""The README and docs/ stay true to the repository: every relative link resolves to a file and
every #anchor to a heading of its target (GitHub's slugs), every `dmfn` command written in a
shell code block parses with its command's parser, and the README stays a front page."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from dmfn.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Fenced blocks whose lines are shell commands.
SHELL = {"", "bash", "sh", "shell", "console"}
README_MAX_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def _split(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, int, list[str]]]]:
    """The lines outside fenced blocks (numbered), and each fenced block (language, first line
    number, lines)."""
    prose, blocks = [], []
    block: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if block is None and fence:
            block = (fence.group(2).lower(), number + 1, [])
        elif block is not None and fence and not fence.group(2):
            blocks.append(block)
            block = None
        elif block is not None:
            block[2].append(line)
        else:
            prose.append((number, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and link targets dropped, lowercase, every character
    but letters, digits, underscores, hyphens and spaces dropped, spaces -> hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a page's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    prose, _ = _split(page.read_text())
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def _links() -> list[tuple[Path, int, str]]:
    links = []
    for page in PAGES:
        prose, _ = _split(page.read_text())
        for number, line in prose:
            for match in LINK.finditer(CODE_SPAN.sub("", line)):
                target = match.group(1)
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    links.append((page, number, target))
    return links


LINKS = _links()


@pytest.mark.parametrize(
    ("page", "number", "target"),
    LINKS,
    ids=[f"{p.relative_to(ROOT)}:{n}:{t}" for p, n, t in LINKS],
)
def test_every_relative_link_resolves(page: Path, number: int, target: str) -> None:
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    where = f"{page.relative_to(ROOT)}:{number}: {target}"
    assert resolved.is_relative_to(ROOT), f"{where} leaves the repository"
    assert resolved.exists(), f"{where}: no such file"
    if anchor:
        assert resolved.suffix == ".md", f"{where}: an anchor into a file that is not Markdown"
        assert anchor in anchors(resolved), f"{where}: no heading with this anchor"


def test_the_link_checker_sees_the_links() -> None:
    """The pages link to each other: a checker that finds nothing checks nothing."""
    targets = {t for p, _, t in LINKS if p.name == "README.md"}
    assert "docs/results.md" in targets and "docs/deploy.md" in targets
    assert any("#" in t for _, _, t in LINKS)


def test_slugs_follow_github() -> None:
    assert slug("7. Proof on a GPU host: `scripts/gpu_check.sh`") == (
        "7-proof-on-a-gpu-host-scriptsgpu_checksh"
    )
    assert slug("The paper's finding, tested (paper preset, calibrated generator)") == (
        "the-papers-finding-tested-paper-preset-calibrated-generator"
    )
    assert slug("Measured costs (the constants to plan with)") == (
        "measured-costs-the-constants-to-plan-with"
    )


def _commands() -> list[tuple[Path, int, list[str]]]:
    """Every `dmfn ...` command of the shell blocks: continuation lines joined, comments and what
    follows a redirection or pipe dropped, a leading `VAR=value` or `sudo -u USER` skipped."""
    found = []
    for page in PAGES:
        _, blocks = _split(page.read_text())
        for language, first, lines in blocks:
            if language not in SHELL:
                continue
            joined: list[tuple[int, str]] = []
            pending = ""
            start = first
            for offset, line in enumerate(lines):
                if not pending:
                    start = first + offset
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                    continue
                joined.append((start, pending + line))
                pending = ""
            for number, command in joined:
                try:
                    words = shlex.split(command, comments=True)
                except ValueError:
                    continue
                for i, word in enumerate(words):
                    if word in {"|", ">", ">>", "&&", "||", ";", "&", "2>"}:
                        words = words[:i]
                        break
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    words = words[1:]
                if words[:2] == ["sudo", "-u"]:
                    words = words[3:]
                if words and (words[0] == "dmfn" or words[0].endswith("/bin/dmfn")):
                    found.append((page, number, words[1:]))
    return found


COMMAND_LINES = _commands()


def test_the_readme_shows_the_commands_of_the_quickstart() -> None:
    readme = {tuple(w[:1]) for p, _, w in COMMAND_LINES if p.name == "README.md"}
    assert {("synth",), ("train",), ("evaluate",), ("export",), ("serve",), ("predict",)} <= readme


@pytest.mark.parametrize(
    ("page", "number", "words"),
    COMMAND_LINES,
    ids=[f"{p.relative_to(ROOT)}:{n}:dmfn {' '.join(w[:1])}" for p, n, w in COMMAND_LINES],
)
def test_every_written_command_parses(page: Path, number: int, words: list[str]) -> None:
    where = f"{page.relative_to(ROOT)}:{number}: dmfn {shlex.join(words)}"
    assert words and words[0] in COMMANDS, f"{where}: no such command"
    module = importlib.import_module(COMMANDS[words[0]][0])
    parser = module.build_parser()
    try:
        parser.parse_args(words[1:])
    except SystemExit as stop:
        pytest.fail(f"{where}: the parser refused it (exit status {stop.code})")


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to a front page"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z-]*):", text, re.M)}


def test_every_make_target_named_in_the_docs_exists() -> None:
    named = {
        (page.relative_to(ROOT), m.group(1))
        for page in PAGES
        for m in re.finditer(r"`make ([a-z][a-z-]*)`", page.read_text())
    }
    targets = _make_targets()
    missing = sorted(f"{page}: make {t}" for page, t in named if t not in targets)
    assert not missing, missing


def test_the_readme_says_what_make_lint_runs() -> None:
    """Each command of the Makefile's lint recipe is named in the README (it once said "ruff"
    while the recipe also ran a format check and mypy)."""
    recipe = re.search(r"^lint:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has no lint target"
    commands = [c.strip().replace("$(VENV)/bin/", "") for c in recipe.group(1).split("&&")]
    readme = (ROOT / "README.md").read_text()
    assert commands and all(f"`{c}`" in readme for c in commands), commands

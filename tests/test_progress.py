"""Progress of long command-line work: records in a log, never carriage-return updates."""

from __future__ import annotations

import io

from dmfn.client import progress
from dmfn.client.progress import Progress, plural


def test_a_log_gets_lines_and_a_summary_not_carriage_returns(monkeypatch) -> None:
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    log = io.StringIO()
    with Progress(3, "predict", stream=log) as bar:
        bar.update()
        bar.update(failed=1)
        bar.update()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[:3] == ["predict: 1/3 studies", "predict: 2/3 studies", "predict: 3/3 studies"]
    assert lines[3].startswith("predict: 3 studies, 1 failed, ") and lines[3].endswith("study/s)")


def test_plural() -> None:
    assert [plural("study", 1), plural("study", 2), plural("image", 0)] == [
        "study",
        "studies",
        "images",
    ]

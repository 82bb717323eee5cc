"""The user's documents speak of the product: no work items, no sessions, nobody's first person.

bench/results/HISTORY.md keeps the benchmark runs verbatim, references included; it is not
checked here.
"""

from __future__ import annotations

import re

import pytest
from helpers import CHECKOUT

DOCS = ["README.md", "BENCHMARKS.md", "CHANGELOG.md"] + sorted(
    str(path.relative_to(CHECKOUT)) for path in (CHECKOUT / "docs").glob("*.md")
)

# What a reader of the product's documents cannot act on. PostgreSQL's own sessions
# ("the session's maintenance_work_mem", target_session_attrs) stay allowed.
REFERENCES = {
    "a work item": re.compile(r"\b(issues?|tickets?|work items?)\b", re.IGNORECASE),
    "a numbered work item": re.compile(r"(?<![\w&/#])#\d+\b"),
    "a numbered session": re.compile(r"\bsessions?\s+\d", re.IGNORECASE),
    "a work session": re.compile(
        r"\b(this|that|previous|next|earlier|later|another)\s+session\b"
        r"|\b(two|three|four|five|its)\s+sessions\b",
        re.IGNORECASE,
    ),
    "who did the work": re.compile(
        r"\bhelpers?\b(?!\.py)|\b(other|the)\s+agents?\b|\b(this|that|the)\s+task\b|\blent\b",
        re.IGNORECASE,
    ),
    "a first person": re.compile(r"(?<![\w/.-])I(?![\w/.'-])|\bmy\b"),
}


def test_the_list_of_documents_is_complete() -> None:
    assert {"README.md", "BENCHMARKS.md", "CHANGELOG.md", "docs/RELIABILITY.md"} <= set(DOCS)


@pytest.mark.parametrize("name", DOCS)
def test_documents_speak_of_the_product_only(name: str) -> None:
    found = [
        f"{name}:{number}: {what}: {line.strip()}"
        for number, line in enumerate((CHECKOUT / name).read_text().splitlines(), 1)
        for what, pattern in REFERENCES.items()
        if pattern.search(line)
    ]
    assert found == []


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("figures in issue 16", "a work item"),
        ("as #13 asked", "a numbered work item"),
        ("Session 4 ran on a Xeon", "a numbered session"),
        ("not adopted in this session", "a work session"),
        ("No GPU was lent to this task", "who did the work"),
        ("three other helpers busy", "who did the work"),
        ("I did not investigate", "a first person"),
    ],
)
def test_the_patterns_catch_what_they_name(line: str, what: str) -> None:
    assert REFERENCES[what].search(line)


@pytest.mark.parametrize(
    "line",
    [
        "raise the session's `maintenance_work_mem`",
        "target_session_attrs=standby",
        "helpers.py (shared test code)",
        "the disk I/O of a scan",
        "colour #ff00aa and the [link](#get-going)",
    ],
)
def test_the_patterns_leave_the_product_alone(line: str) -> None:
    assert not any(pattern.search(line) for pattern in REFERENCES.values())

"""The plans of the statements a search runs, the ones inside clipdb.search_rows included.

The top-k statement is built and planned inside the SQL function, so ``EXPLAIN`` of the call
shows only a function scan. ``auto_explain`` (loaded for one transaction, which takes a
superuser) reports every nested statement's plan as a notice instead; tests and benchmarks use
it to check which index served a search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.errors import Diagnostic

_SETTINGS = (
    ("auto_explain.log_min_duration", "0"),
    ("auto_explain.log_nested_statements", "on"),
    ("auto_explain.log_level", "notice"),
)


def nested_plans(conn: psycopg.Connection[Any], run: Callable[[], object]) -> str:
    """The text plans of every statement ``run()`` executes on ``conn``, nested ones too."""
    notices: list[str] = []

    def collect(diagnostic: Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    conn.add_notice_handler(collect)
    try:
        with conn.transaction():
            conn.execute("LOAD 'auto_explain'")
            for name, value in _SETTINGS:
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            run()
    finally:
        conn.remove_notice_handler(collect)
    return "\n".join(notices)

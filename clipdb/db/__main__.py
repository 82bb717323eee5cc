"""``clipdb db`` (``python -m clipdb.db``): the embedded server, the schema, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from clipdb.cli import command_parser, run_command
from clipdb.config import Settings, add_common_arguments
from clipdb.db import database_status, format_status, open_database
from clipdb.db.migrate import current_revision_of
from clipdb.errors import UsageError

EXAMPLES = """\
examples:
  clipdb db url                 # start the embedded server, print its URL
  psql "$(clipdb db url)"       # look around with psql
  clipdb db status              # revision, images per model, index sizes
  clipdb db status --json       # the same as one JSON object
  clipdb db stop                # stop the embedded server
  CLIPDB_DATABASE_URL=postgresql://clipdb:clipdb@localhost:5432/clipdb clipdb db upgrade
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "db", "Manage clipdb's database: the embedded server or the one you point it at.", EXAMPLES
    )
    parser.add_argument(
        "action",
        choices=["url", "status", "stop", "upgrade"],
        help="url: print a connection URL (starting the embedded server if needed); "
        "status: server, schema, counts and indexes; stop: stop the embedded server; "
        "upgrade: migrate the schema to the latest revision",
    )
    parser.add_argument("--json", action="store_true", help="status: print it as one JSON object")
    add_common_arguments(parser, with_model=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        settings = Settings.from_args(args)
        if args.action == "stop":
            if settings.database_url:
                raise UsageError("stop applies to the embedded server only, not --database-url")
            from clipdb.db.embedded import stop_server

            print("stopped" if stop_server(settings.home) else "not running")
            return 0
        database = open_database(settings)
        if args.action == "url":
            print(database.url)
        elif args.action == "status":
            status = database_status(database)
            if args.json:
                print(json.dumps({"url": database.url, **asdict(status)}, indent=2))
            else:
                print(format_status(status, database.url))
        elif args.action == "upgrade":
            print(f"schema at revision {current_revision_of(database)}")
        return 0

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())

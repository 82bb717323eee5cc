"""``clipdb db`` (``python -m clipdb.db``): the embedded server, the schema, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from clipdb.cli import command_parser, run_command
from clipdb.config import Settings, add_common_arguments
from clipdb.db import (
    Database,
    database_status,
    format_status,
    libpq_url,
    open_database,
    resolve_database,
    server_address,
)
from clipdb.db.migrate import upgrade
from clipdb.db.replica import promote, replicate
from clipdb.errors import UsageError
from clipdb.terminal import printable

EXAMPLES = """\
examples:
  clipdb db url                 # start the embedded server, print its URL
  psql "$(clipdb db url)"       # look around with psql
  clipdb db status              # revision, images per model, index sizes
  clipdb db status --json       # the same as one JSON object
  clipdb db stop                # stop the embedded server
  clipdb db replicate --to ~/clipdb-standby          # a streaming standby of this database
  clipdb search --text "a cat" --read-database-url "$(CLIPDB_HOME=~/clipdb-standby clipdb db url)"
  CLIPDB_HOME=~/clipdb-standby clipdb db status     # role standby, replay lag
  CLIPDB_HOME=~/clipdb-standby clipdb db promote    # make it a primary
  CLIPDB_DATABASE_URL=postgresql://clipdb:clipdb@localhost:5432/clipdb clipdb db upgrade

Run 'clipdb db ACTION --help' for one action's options.
"""

# action -> (one line for the list, its own description and examples)
ACTIONS = {
    "url": (
        "print a connection URL (starting the embedded server if needed)",
        'examples:\n  clipdb db url\n  psql "$(clipdb db url)"\n',
    ),
    "status": (
        "server, role, replica lag, schema, counts and indexes",
        "examples:\n  clipdb db status\n  clipdb db status --json\n",
    ),
    "stop": ("stop the embedded server", "example:\n  clipdb db stop\n"),
    "upgrade": (
        "migrate the schema to the latest revision",
        "example:\n  CLIPDB_DATABASE_URL=postgresql://clipdb:clipdb@localhost:5432/clipdb "
        "clipdb db upgrade\n",
    ),
    "replicate": (
        "make a streaming standby in --to DIR",
        "examples:\n  clipdb db replicate --to ~/clipdb-standby\n"
        '  clipdb search --text "a cat" --read-database-url '
        '"$(CLIPDB_HOME=~/clipdb-standby clipdb db url)"\n',
    ),
    "promote": (
        "make this standby a primary",
        "example:\n  CLIPDB_HOME=~/clipdb-standby clipdb db promote\n",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "db", "Manage clipdb's database: the embedded server or the one you point it at.", EXAMPLES
    )
    add_common_arguments(parser, with_model=False)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")
    subparsers = {}
    for name, (what, examples) in ACTIONS.items():
        # Defaults suppressed: --database-url given before the action is not reset by the
        # action's own (absent) --database-url.
        sub = actions.add_parser(
            name,
            help=what,
            description=what[0].upper() + what[1:] + ".",
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            argument_default=argparse.SUPPRESS,
        )
        sub.set_defaults(command_prog=sub.prog)
        add_common_arguments(sub, with_model=False)
        subparsers[name] = sub
    subparsers["status"].add_argument(
        "--json", action="store_true", default=False, help="print it as one JSON object"
    )
    replicate = subparsers["replicate"]
    replicate.add_argument(
        "--to", metavar="DIR", required=True, help="the new standby's CLIPDB_HOME (new or empty)"
    )
    replicate.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        default=None,
        help="the primary (a role with REPLICATION; default: this database)",
    )
    replicate.add_argument(
        "--sync",
        action="store_true",
        default=False,
        help="commits on the primary wait until this standby has applied them "
        "(synchronous_commit=remote_apply; if the standby is down, commits wait)",
    )
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
        if args.action == "replicate":
            return replicate_command(args, settings)
        if args.action == "upgrade":
            database = open_database(settings, migrate=False)
            print(f"schema at revision {upgrade(database)}")
            finish_storage(database)
            return 0
        database = open_database(settings)
        if args.action == "promote":
            promote(database)
            print(f"promoted: {database.url} is now a primary")
            return 0
        if args.action == "url":
            print(database.url)
        elif args.action == "status":
            status = database_status(database)
            if args.json:
                print(json.dumps({"url": database.url, **asdict(status)}, indent=2))
            else:
                print(format_status(status, database.url))
        return 0

    return run_command(build_parser(), argv, body)


def finish_storage(database: Database) -> None:
    """Move a large table's embeddings to halfvec online (migration 0011), batch by batch."""
    from clipdb.db import connect_checked
    from clipdb.db.storage import convert

    with connect_checked(database.url, autocommit=True) as conn:
        if convert(conn, progress=lambda line: print(line, file=sys.stderr, flush=True)):
            print("embeddings stored as halfvec")


def replicate_command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.to:
        raise UsageError("--to needs a folder (the standby's CLIPDB_HOME)")
    source = Database(url=libpq_url(args.source)) if args.source else resolve_database(settings)
    server = replicate(source, Path(args.to), sync=args.sync)
    print(f"standby in {printable(str(server.home))}, streaming from {server_address(source.url)}")
    print(server.url())
    return 0


if __name__ == "__main__":
    sys.exit(main())

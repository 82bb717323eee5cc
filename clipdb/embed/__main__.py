"""``clipdb embed`` (``python -m clipdb.embed``): print a query embedding for SQL."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from clipdb.cli import add_encoder_arguments, command_parser, run_command
from clipdb.config import Settings, add_common_arguments
from clipdb.errors import UsageError

EXAMPLES = """\
examples:
  clipdb embed --text "a red car"             # [0.0123,-0.0456,...] (pgvector literal)
  clipdb embed photo.jpg --json               # a JSON list of floats
  psql "$(clipdb db url)" -c \\
    "SELECT * FROM clipdb.search('$(clipdb embed --text 'a red car')'::vector, 5)"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "embed",
        "Print the L2-normalised CLIP embedding of an image or a text (the query vector a "
        "search would use), for clipdb.search() in SQL or another app.",
        EXAMPLES,
    )
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="image file")
    parser.add_argument("--text", metavar="TEXT", help="text to embed (with IMAGE: their mean)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    add_encoder_arguments(parser)
    add_common_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        if args.image is None and args.text is None:
            raise UsageError("give an IMAGE or --text TEXT")
        if args.text is not None and not args.text.strip():
            raise UsageError("--text is empty; give words to embed")
        from clipdb.db import open_database
        from clipdb.embed import embed_query
        from clipdb.query import EncoderOptions, Query

        settings = Settings.from_args(args)
        query = Query(image=args.image, text=args.text)
        options = EncoderOptions.from_args(args, settings)
        result = embed_query(settings, open_database(settings), query, options)
        if args.json:
            print(json.dumps([float(v) for v in result.vector]))
        else:
            print(result.pgvector_literal())
        return 0

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())

"""``clipdb dupes`` (``python -m clipdb.dupes``): parse, find groups, print, exit code."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence

from clipdb.cli import command_parser, run_command, similarity_value
from clipdb.config import Settings, add_common_arguments
from clipdb.db import open_database
from clipdb.dupes import (
    DEFAULT_NEAR_DISTANCE,
    DEFAULT_SIMILAR_THRESHOLD,
    TIERS,
    DupesResult,
    Group,
    Member,
    dupes_for,
    parse_tiers,
)
from clipdb.dupes.keep import RULE
from clipdb.errors import UsageError
from clipdb.files import display
from clipdb.terminal import printable

EXAMPLES = f"""\
tiers: exact = same bytes (sha256); near = perceptual hash within --near-distance bits
(re-encoded, resized, converted copies); similar = CLIP cosine >= --similar-threshold (the same
scene, another shot; every member is within the threshold of the kept image; each image's
neighbours are looked for once and kept in the database, so only the first run over a library
compares every embedding). Each image is in at most one group, in its strongest tier. Two
names of one file (a link and its target, hard links) are one file, never duplicates of each
other.

kept image (the original): {RULE}. A copy never wins on bytes alone; each kept image says why
(reason), and a duplicate with capture metadata the kept one lacks is flagged.

PATH: the groups with at least one image under a PATH; their other images, wherever they
are, are shown too, marked outside.

examples:
  clipdb dupes                               # every group of the model's images
  clipdb dupes ~/Pictures/2024 --tier exact,near
  clipdb dupes --json > groups.json
  clipdb dupes --script move.sh --move-to ~/dupes   # then: sh move.sh; clipdb ingest --prune
  (the script checks each group again when it runs and skips a group whose files changed)
(defaults: --near-distance {DEFAULT_NEAR_DISTANCE}, --similar-threshold {DEFAULT_SIMILAR_THRESHOLD})
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("dupes", "Find duplicate images among the indexed ones.", EXAMPLES)
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="only groups with an image under these"
    )
    parser.add_argument(
        "--tier",
        metavar="TIERS",
        help=f"comma list of {', '.join(TIERS)} (default: all)",
    )
    parser.add_argument(
        "--near-distance",
        type=int,
        default=DEFAULT_NEAR_DISTANCE,
        metavar="BITS",
        help=f"near tier: pHash Hamming distance 0..8 (default {DEFAULT_NEAR_DISTANCE})",
    )
    parser.add_argument(
        "--similar-threshold",
        type=similarity_value,
        default=DEFAULT_SIMILAR_THRESHOLD,
        metavar="S",
        help=f"similar tier: cosine similarity (default {DEFAULT_SIMILAR_THRESHOLD})",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="groups as JSON")
    output.add_argument("--csv", action="store_true", help="one CSV row per image")
    parser.add_argument(
        "--script",
        metavar="FILE",
        help="write a sh script that moves every non-kept file into --move-to (exact and "
        "near groups, similar too when --tier names it); clipdb moves nothing itself",
    )
    parser.add_argument("--move-to", metavar="DIR", help="where the script moves duplicates")
    parser.add_argument(
        "--table",
        action="store_true",
        help="with --script: print the groups too (by default only what was written is said)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --script FILE (a regular file; never a link) with a new one",
    )
    add_common_arguments(parser)
    return parser


def _how(m: Member) -> str:
    if m.distance is not None and not m.keep:
        return f"{m.distance} bits"
    return f"{m.similarity:.4f}" if m.similarity is not None else "-"


def format_table(groups: Sequence[Group]) -> str:
    """Aligned columns (widths from the widest value, so none drifts), the path last; under
    the kept image why it is kept, under a duplicate the metadata it has that the kept lacks."""
    rows: list[tuple[Group | None, list[str], list[str]]] = []
    for group in groups:
        rows.append((group, [], []))
        for m in group.images:
            flags = ",".join(f for f, on in (("outside", m.outside), ("link", m.link)) if on)
            cells = [
                "keep" if m.keep else "dupe",
                f"{m.width}x{m.height}",
                f"{m.size} B",
                _how(m),
                flags or "-",
                printable(display(m.image_path)),
            ]
            notes = []
            if m.keep:
                notes.append(f"kept: {m.reason}")
            elif m.extra_metadata:
                notes.append(f"note: has {', '.join(m.extra_metadata)} that the kept file lacks")
            if m.aliases:
                names = ", ".join(printable(display(a)) for a in m.aliases)
                notes.append(f"same file as: {names}")
            rows.append((None, cells, notes))
    widths = [max((len(c[i]) for _, c, _ in rows if c), default=0) for i in range(5)]
    right = (False, True, True, True, False)
    lines = []
    number = 0
    for header, cells, notes in rows:
        if header is not None:
            number += 1
            lines.append(f"group {number}: {header.tier}, {len(header.images)} images")
            continue
        padded = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=False)
        ]
        lines.append("  " + "  ".join([*padded, cells[5]]))
        lines.extend(f"        {note}" for note in notes)
    return "\n".join(lines)


def _csv_value(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return value


def format_csv(groups: Sequence[Group]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = [
        "image_path",
        "image_id",
        "width",
        "height",
        "size",
        "keep",
        "distance",
        "similarity",
        "reason",
        "metadata",
        "extra_metadata",
        "outside",
    ]
    writer.writerow(["group", "tier", *columns])
    for number, group in enumerate(groups, 1):
        for m in group.images:
            data = m.to_dict()
            writer.writerow([number, group.tier, *(_csv_value(data.get(c, "")) for c in columns)])
    return out.getvalue().rstrip("\n")


def report(result: DupesResult, paths: Sequence[str]) -> None:
    """What could not be judged, on stderr."""
    if result.images == 0:
        where = f" under {', '.join(printable(display(p)) for p in paths)}" if paths else ""
        print(f"no indexed images{where}: no duplicates", file=sys.stderr)
        return
    for path in result.stale:
        print(
            f"stale (changed or gone since indexing, not grouped): {printable(display(path))}",
            file=sys.stderr,
        )
    if result.unhashed:
        print(
            f"{result.unhashed} images have no perceptual hash yet (the near tier cannot see "
            "them); run clipdb ingest over them: it adds the hash without re-encoding",
            file=sys.stderr,
        )
    if not result.groups:
        print(f"no duplicates among {result.images} images", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: argparse.Namespace) -> int:
        if (args.script is None) != (args.move_to is None):
            raise UsageError("--script and --move-to go together")
        if args.force and args.script is None:
            raise UsageError("--force goes with --script")
        if args.table and args.script is None:
            raise UsageError("--table goes with --script (without it the table is the output)")
        if args.script is not None:
            from clipdb.dupes.script import check_script

            check_script(args.script, args.force)  # before any work: a refusal costs nothing
        tiers = parse_tiers(args.tier) if args.tier else TIERS
        settings = Settings.from_args(args)
        database = open_database(settings)
        result, trees = dupes_for(
            database,
            settings,
            args.paths or None,
            tiers=tiers,
            near_distance=args.near_distance,
            similar_threshold=args.similar_threshold,
            with_trees=args.script is not None,
        )
        if args.script is not None:
            from clipdb.dupes.script import check_move_to, common_root, write_script

            acting = [
                g for g in result.groups if g.tier != "similar" or "similar" in (args.tier or "")
            ]
            indexed = [*trees, *(args.paths or [])] + ([common_root(acting)] if acting else [])
            target = check_move_to(args.move_to, indexed)
            moves = write_script(args.script, acting, target, force=args.force)
            print(
                f"wrote {printable(display(args.script))}: {moves} moves into "
                f"{printable(display(target))}; read it, then run it with sh",
                file=sys.stderr,
            )
        if args.json:
            print(json.dumps([g.to_dict() for g in result.groups], indent=2, ensure_ascii=False))
        elif args.csv:
            print(format_csv(result.groups))
        elif result.groups and (args.script is None or args.table):
            print(format_table(result.groups))
        report(result, args.paths)
        return 0

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())

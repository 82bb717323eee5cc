"""``python -m clipdb`` lists the commands."""

print(
    "clipdb commands:\n"
    "  python -m clipdb.ingest PATH...   index images\n"
    "  python -m clipdb.search QUERY     find similar images\n"
    "  python -m clipdb.serve            web page and JSON API\n"
    "  python -m clipdb.db url|status|stop|upgrade"
)

"""Injection, access and loading: user input is data, never SQL; nothing is unpickled.

Already proved elsewhere (not repeated here): the reader role's denied INSERT/UPDATE/DELETE/
TRUNCATE/DROP/register_model (test_db.py::test_reader_role_reads_but_cannot_write), thumbnails
by integer id only with ``..%2F`` ids and ``?path=`` ignored (test_serve.py::
test_thumbnails_only_for_indexed_ids), a tampered/pickled/object-array export refused
(test_api.py::test_tampered_or_foreign_index_files_are_refused), crafted exports with valid
checksums (test_import_safety.py), a reader holding every lock it can take
(test_reader_locks.py).
"""

from __future__ import annotations

import ast
import http.client
import io
import json
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY_MODEL, make_images, table

import clipdb
from clipdb.db.registry import list_models
from clipdb.errors import ClipdbError
from clipdb.export import export_index, read_index
from clipdb.ingest import ingest
from clipdb.ingest.__main__ import main as ingest_main
from clipdb.search.__main__ import main as search_main
from clipdb.serve import DEFAULT_HOST, create_app, running
from clipdb.serve.__main__ import build_parser

LOCAL = "http://127.0.0.1"  # TestClient's default Host "testserver" is refused
PACKAGE = Path(clipdb.__file__).parent
DROP = "'); DROP TABLE clipdb.images; --"
# Directory names that would mean something else to LIKE, to a quoting bug, or to a shell.
HOSTILE_DIRS = ["a_b", "aXb", "a%b", "aYYb", "it's", 'say "hi"', "back\\slash", DROP]


@pytest.fixture
def hostile_index(database, tiny_encoder, tmp_path) -> dict[str, Path]:
    """One image in each hostile directory, indexed; returns {dir name: image path}."""
    images = {}
    for seed, name in enumerate(HOSTILE_DIRS):
        images[name] = make_images(tmp_path / "lib" / name, 1, seed=seed, prefix=f"p{seed}")[0]
    ingest([tmp_path / "lib"], database=database, encoder=tiny_encoder, workers=0,
           progress=False)  # fmt: skip
    return images


def search_paths(capsys, *args: str) -> tuple[int, list[str], str]:
    code = search_main([*args, "--paths", "-k", "50"])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_paths_and_under_prefixes_are_data_not_patterns_or_sql(
    database, hostile_index, tmp_path, capsys
):
    assert sorted(table(database)) == sorted(str(p) for p in hostile_index.values())
    for name, image in hostile_index.items():
        # --like by a path full of quotes finds exactly that row ...
        code, paths, err = search_paths(capsys, "--like", str(image))
        assert code == 0, err
        assert paths[0] == str(image) and len(paths) == len(HOSTILE_DIRS)
        # ... and --under matches the directory literally: "a_b" is not "aXb", "a%b" not "aYYb".
        code, paths, err = search_paths(capsys, "--like", str(image), "--under", str(image.parent))
        assert (code, paths) == (0, [str(image)]), (name, err)
    code, paths, _ = search_paths(capsys, "--like", str(hostile_index["aXb"]), "--under",
                                  str(tmp_path / "lib" / "a_"))  # fmt: skip
    assert (code, paths) == (0, [])  # a prefix is a directory, not the start of a name
    assert len(table(database)) == len(HOSTILE_DIRS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--like", "a\0b"], "NUL"),
        (["--like", "@LIKE", "--under", "/x\0y"], "NUL"),
        (["--like", f"/nowhere/{DROP}.jpg"], "is not indexed"),
        (["--like", "@LIKE", "--model", DROP], "no images indexed with model"),
        (["--like", "@LIKE", "--model", "a\0b"], "no images indexed with model"),
        (["--like", "@LIKE", "--model", TINY_MODEL, "--pretrained", DROP], "no images indexed"),
    ],
)
def test_hostile_search_arguments_are_one_line_errors(
    database, hostile_index, capsys, args, message
):
    like = str(hostile_index["a_b"])
    code, _, err = search_paths(capsys, *[like if a == "@LIKE" else a for a in args])
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert len(table(database)) == len(HOSTILE_DIRS)


def test_hostile_search_text_is_encoded_not_executed(database, hostile_index, capsys):
    for text in (DROP, "100% _match_ \\ \" '", "a\0b"):  # NUL never reaches SQL: it is tokenised
        code = search_main(["--text", text, "--model", TINY_MODEL, "--pretrained", "none",
                            "--json", "-k", "3"])  # fmt: skip
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert len(json.loads(captured.out)) == 3
    assert len(table(database)) == len(HOSTILE_DIRS)


def test_hostile_ingest_arguments_are_usage_or_one_line_errors(database, tmp_path, capsys):
    make_images(tmp_path, 1)
    base = [str(tmp_path), "--workers", "0"]
    cases = [
        ([str(tmp_path / "a\0b"), "--workers", "0"], 2, "does not exist"),
        ([*base, "--model", DROP, "--pretrained", "none"], 2, "unknown model"),
        ([*base, "--model", "a\0b", "--pretrained", "none"], 1, "NUL"),
        ([*base, "--model", TINY_MODEL, "--pretrained", "x\0y"], 1, "NUL"),
    ]
    for args, expected, message in cases:
        assert ingest_main(args) == expected, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert err.count("error:") == 1
    with database.connect() as conn:
        assert list_models(conn) == []  # nothing was registered by any of them


# --- access -------------------------------------------------------------------------------------


def test_reader_role_cannot_ingest_and_gets_one_line(database, hostile_index, tmp_path, capsys):
    reader = database.url.replace("postgres@", "clipdb_reader@", 1)
    with database.connect() as conn:  # what the reader may do: search through SQL
        conn.execute("SET ROLE clipdb_reader")
        rows = conn.execute(
            "SELECT path FROM clipdb.similar(%s, 3)", (str(hostile_index["a_b"]),)
        ).fetchall()
        assert rows[0] == (str(hostile_index["a_b"]),)
    make_images(tmp_path / "lib" / "new", 1, seed=77)
    code = ingest_main([str(tmp_path / "lib"), "--database-url", reader, "--model", TINY_MODEL,
                        "--pretrained", "none", "--workers", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err == (
        "error: role clipdb_reader may not write to clipdb.images (a read-only role such as "
        "clipdb_reader can only search)\n"
    ), err
    assert len(table(database)) == len(HOSTILE_DIRS)


def test_reader_role_searches_through_the_cli(database, hostile_index, capsys):
    reader = database.url.replace("postgres@", "clipdb_reader@", 1)
    image = hostile_index["a_b"]
    code, paths, err = search_paths(capsys, "--like", str(image), "--database-url", reader)
    assert code == 0 and paths[0] == str(image), err


@pytest.fixture
def client(database, tiny_encoder, hostile_index) -> Any:
    with TestClient(create_app(database, encoder=tiny_encoder), base_url=LOCAL) as test_client:
        yield test_client


def test_web_api_nul_bytes_and_sql_are_400_or_data(client, hostile_index):
    bad = client.get("/api/search", params={"text": "x", "under": "/x\0y"})
    assert bad.status_code == 400 and "NUL" in bad.json()["detail"]
    bad = client.post("/api/search", data={"text": "x", "under": "\0"})
    assert bad.status_code == 400
    assert client.get("/api/similar/1", params={"under": "\0"}).status_code == 400
    assert client.get("/api/search", params={"text": "a\0b"}).status_code == 200
    under = str(hostile_index["a_b"].parent)
    hits = client.get("/api/search", params={"text": DROP, "under": under, "k": 50}).json()
    assert [h["image_path"] for h in hits] == [str(hostile_index["a_b"])]
    hits = client.get("/api/search", params={"text": "x", "under": "%", "k": 50}).json()
    assert hits == []  # "%" is a literal prefix, not a wildcard
    assert len(client.get("/api/search", params={"text": "x", "k": 50}).json()) == 8


def test_static_files_never_leave_their_directory(client):
    for path in (
        "/static/..%2fserve.py",
        "/static/%2e%2e/serve.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static/..%5cserve.py",
        "/static/%2fetc%2fpasswd",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "import" not in response.text and "root:" not in response.text


def test_server_binds_loopback_by_default_and_raw_dot_dot_paths_are_404(
    database, tiny_encoder, hostile_index
):
    assert DEFAULT_HOST == "127.0.0.1" and build_parser().parse_args([]).host == "127.0.0.1"
    with running(create_app(database, encoder=tiny_encoder)) as url:
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for raw in ("/static/../serve.py", "/static/../../pyproject.toml", "/../etc/passwd"):
            connection.request("GET", raw)  # sent as is: no client-side normalisation
            response = connection.getresponse()
            assert response.status == 404, raw
            response.read()
        connection.close()
        # Not reachable on another address of this machine (when it has one).
        other = _non_loopback_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent for UDP connect
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


# --- no pickle ----------------------------------------------------------------------------------


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Calls whose function is spelled ``<anything>.<name>``."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
    ]


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def test_no_module_can_unpickle() -> None:
    unsafe_modules = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal"}
    checked = 0
    for source in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & unsafe_modules, f"{source}: imports {names & unsafe_modules}"
        for call in _calls(tree, "load"):
            owner = ast.unparse(call.func.value)
            if owner in ("np", "numpy"):
                assert _keyword(call, "allow_pickle") is False, f"{source}:{call.lineno}"
            if owner == "torch":
                assert _keyword(call, "weights_only") is True, f"{source}:{call.lineno}"
            checked += 1
        for call in _calls(tree, "loads"):
            assert ast.unparse(call.func.value) == "json", f"{source}:{call.lineno}"
    assert checked >= 1  # the export reader's np.load was seen


class _Payload:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_pickled_checkpoint_and_export_run_no_code(tmp_path) -> None:
    from clipdb.encoders import load_encoder

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(ClipdbError):
        load_encoder(TINY_MODEL, str(checkpoint), device="cpu", precision="fp32")
    export = tmp_path / "evil.npz"
    np.savez(export, paths=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(ClipdbError, match="pickled data"):
        read_index(export)
    assert not marker.exists()


def test_tampered_paths_or_truncated_export_fail_clearly(database, hostile_index, tmp_path):
    with database.connect() as conn:
        (model,) = list_models(conn)
        export = export_index(conn, model, tmp_path / "export.npz")
    with np.load(export, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["paths"] = arrays["paths"].copy()
    arrays["paths"][0] = "/etc/shadow"  # one path swapped, checksum left as it was
    np.savez(tmp_path / "swapped.npz", **arrays)
    with pytest.raises(ClipdbError, match="failed its checksum"):
        read_index(tmp_path / "swapped.npz")
    data = export.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipdbError) as caught:
        read_index(tmp_path / "cut.npz")
    assert str(caught.value).count("\n") == 0
    buffer = io.BytesIO(data)
    buffer.seek(len(data) // 2)
    buffer.write(b"\xff" * 64)  # bytes flipped inside a member: zip CRC or checksum catches it
    (tmp_path / "flipped.npz").write_bytes(buffer.getvalue())
    with pytest.raises(ClipdbError):
        read_index(tmp_path / "flipped.npz")

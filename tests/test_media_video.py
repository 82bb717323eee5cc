"""Videos: frames sampled by scene change with a floor and a cap, each a row with the video's
path and its time; searched as one hit at the best frame; a broken video is a skip."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from media_samples import picture, video

from clipdb import decode, pixels
from clipdb.db.queries import search_vector
from clipdb.ingest import video as sampling

PIPELINE = pixels.PixelPipeline(input_size=32, pil_steps=(("resize", (32,), 2, None),))


def _times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [round(t, 3) for t, _ in sampling.sample_frames(container, 64)]


def test_frames_at_scene_changes_with_a_floor_and_a_cap(tmp_path):
    # Cuts at 3.0 and 7.2 s; nothing changes after 7.2 s: the floor keeps one per 10 s.
    assert _times(video(tmp_path / "a.mp4", 25, scenes=(3.0, 7.2))) == [0.0, 3.0, 7.2, 17.2]
    # Cuts 0.3 s apart are one frame per second at most.
    assert _times(video(tmp_path / "b.mp4", 3, scenes=(1.0, 1.3, 1.6), gop=1)) == [0.0, 1.0, 2.0]


def test_keyframes_further_apart_than_the_floor_are_filled_by_seeking(tmp_path):
    assert _times(video(tmp_path / "a.mp4", 25, gop=250)) == [0.0, 10.0, 20.0]


def test_container_creation_time_and_place(tmp_path):
    tags = {"creation_time": "2024-05-06T07:08:09Z", "location": "+48.8583+002.2945/"}
    path = video(tmp_path / "a.mov", 1, metadata=tags)
    frames = sampling.video_task(str(path), pipeline=PIPELINE, max_pixels=None)
    assert isinstance(frames, tuple) and frames[0].first_frame
    meta = frames[0].metadata
    assert meta is not None and (meta.lat, meta.lon) == (48.8583, 2.2945)
    assert meta.taken_at is not None and meta.taken_at.isoformat() == "2024-05-06T07:08:09+00:00"
    apple = sampling.container_metadata(
        {
            "com.apple.quicktime.creationdate": "2024-05-06T09:08:09+0200",
            "com.apple.quicktime.location.ISO6709": "-33.8568+151.2153+005.000/",
            "com.apple.quicktime.make": "Apple",
            "com.apple.quicktime.model": "iPhone 15",
        }
    )
    assert apple.taken_at is not None and apple.taken_at.utcoffset().total_seconds() == 7200
    assert (apple.lat, apple.lon, apple.camera) == (-33.8568, 151.2153, "Apple iPhone 15")


def test_a_video_that_cannot_be_decoded_is_a_skip(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    result = sampling.video_task(str(bad), pipeline=PIPELINE, max_pixels=None)
    assert isinstance(result, decode.Decoded) and result.reason == sampling.UNDECODABLE
    assert sampling.unusable(str(bad), None, None) == sampling.UNDECODABLE
    assert sampling.unusable(str(video(tmp_path / "ok.mp4", 1)), None, None) is None


def test_videos_are_frame_rows_searched_once_at_the_best_frame(database, tiny_encoder, tmp_path):
    from test_ingest import run

    root = tmp_path / "lib"
    root.mkdir()
    clip = video(root / "clip.mp4", 12, scenes=(4.0,))
    picture(seed=7).save(root / "photo.jpg")
    summary = run([root], database, tiny_encoder)
    assert (summary.found, summary.new, summary.skipped) == (2, 2, {})  # files, not frames
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT path, frame_time, width, height FROM clipdb.images ORDER BY path, frame_time"
        ).fetchall()
    frames = [(t, w, h) for p, t, w, h in rows if p == str(clip)]
    assert frames == [(0.0, 64, 64), (4.0, 64, 64)]
    assert [t for p, t, _, _ in rows if p.endswith("photo.jpg")] == [None]
    # A frame's own picture finds the video, once, at that frame's time.
    with av.open(str(clip)) as container:
        _, later = list(sampling.sample_frames(container, 64))[1]
    query = tiny_encoder.encode_pil([later])[0]
    with database.connect() as conn:
        from clipdb.db.registry import registered_model

        model = registered_model(conn, tiny_encoder.architecture, tiny_encoder.pretrained)
        assert model is not None
        hits = search_vector(conn, model, np.asarray(query), 10)
    assert [hit.image_path for hit in hits].count(str(clip)) == 1
    best = next(hit for hit in hits if hit.image_path == str(clip))
    assert best.frame_time == 4.0 and best.to_dict()["media"] == "video"
    assert best.to_dict()["time"] == 4.0
    # SQL callers: clipdb.search returns the video once; its id is the best frame's row.
    with database.connect() as conn:
        sql_rows = conn.execute(
            "SELECT s.path, i.frame_time FROM clipdb.search(%s::vector, 10) s "
            "JOIN clipdb.images i ON i.id = s.id",
            (np.asarray(query).tolist(),),
        ).fetchall()
    assert [t for p, t in sql_rows if p == str(clip)] == [4.0]
    # --hide-duplicates keeps the frame's time.
    from clipdb.dupes.collapse import collapse_hits

    with database.connect() as conn:
        kept = collapse_hits(conn, model, hits, np.asarray(query), 10, among_hits=True)
    assert [h.frame_time for h in kept if h.image_path == str(clip)] == [4.0]
    # --like clip.mp4@SECONDS: the frame nearest that time.
    from clipdb.db.queries import indexed_embedding

    with database.connect() as conn:
        stored = dict(
            conn.execute(
                "SELECT frame_time, embedding FROM clipdb.images WHERE path = %s", (str(clip),)
            ).fetchall()
        )
        for asked, frame in ((f"{clip}@3.9", 4.0), (f"{clip}@1", 0.0), (str(clip), 0.0)):
            like = indexed_embedding(conn, model, asked)
            assert np.allclose(like, np.asarray(stored[frame].to_numpy())), asked
    # Unchanged: nothing re-encoded. Rewritten shorter: its old frames go.
    assert run([root], database, tiny_encoder).unchanged == 2
    video(clip, 2)
    assert run([root], database, tiny_encoder).updated == 1
    with database.connect() as conn:
        times = conn.execute(
            "SELECT frame_time FROM clipdb.images WHERE path = %s", (str(clip),)
        ).fetchall()
    assert times == [(0.0,)]


@pytest.mark.parametrize("suffix", [".mov", ".m4v", ".mkv", ".webm", ".3gp", ".avi"])
def test_each_container_decodes(tmp_path, suffix):
    path = video(tmp_path / f"a{suffix}", 1)
    frames = sampling.video_task(str(path), pipeline=PIPELINE, max_pixels=None)
    assert isinstance(frames, tuple) and frames[0].frame_time is not None
    assert frames[0].frame_time < 0.5  # AVI stamps H.264 one frame late


def test_tables_show_a_video_hit_with_its_time():
    from clipdb.db.queries import Hit
    from clipdb.files import split_frame
    from clipdb.search.output import format_table

    hits = [
        Hit(1, "/v/clip.mp4", 0.9, 7, frame_time=83.4),
        Hit(2, "/v/long.mkv", 0.8, 8, frame_time=3723.0),
        Hit(3, "/p/a.jpg", 0.7, 9),
    ]
    table = format_table(hits).splitlines()
    assert table[1].endswith("/v/clip.mp4 @ 01:23") and table[2].endswith("long.mkv @ 1:02:03")
    assert table[3].endswith("/p/a.jpg")
    assert [h.to_dict()["media"] for h in hits] == ["video", "video", "image"]
    assert split_frame("/v/clip.mp4@83") == ("/v/clip.mp4", 83.0)
    assert split_frame("/p/me@home.jpg") == ("/p/me@home.jpg", None)
    assert split_frame("/v/clip.mp4@x") == ("/v/clip.mp4@x", None)


def test_the_server_serves_a_frame_thumbnail_and_the_video_with_ranges(
    database, tiny_encoder, tmp_path
):
    from fastapi.testclient import TestClient
    from test_ingest import run

    from clipdb.serve import create_app

    root = tmp_path / "lib"
    root.mkdir()
    clip = video(root / "clip.mp4", 6, scenes=(4.0,))
    run([root], database, tiny_encoder)
    with database.connect() as conn:
        ids = dict(conn.execute("SELECT frame_time, id FROM clipdb.images").fetchall())
    data = clip.read_bytes()
    with TestClient(create_app(database, encoder=tiny_encoder), base_url="http://127.0.0.1") as c:
        thumb = c.get(f"/api/images/{ids[4.0]}/thumbnail")
        assert thumb.status_code == 200 and thumb.content.startswith(b"\xff\xd8")
        whole = c.get(f"/api/images/{ids[4.0]}/video")
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-type"] == "video/mp4"
        assert whole.headers["accept-ranges"] == "bytes"
        part = c.get(f"/api/images/{ids[0.0]}/video", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        tail = c.get(f"/api/images/{ids[0.0]}/file", headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == data[-5:]
        assert (
            c.get(f"/api/images/{ids[0.0]}/video", headers={"Range": "bytes=9999999-"}).status_code
            == 416
        )
        clip.write_bytes(data + b"\0")  # changed after indexing
        assert c.get(f"/api/images/{ids[0.0]}/video").status_code == 410
        assert c.get(f"/api/images/{ids[0.0]}/thumbnail").status_code == 410


def test_a_copied_video_is_one_exact_duplicate_group_of_two_files(database, tiny_encoder, tmp_path):
    import shutil

    from test_ingest import run

    from clipdb.db.registry import registered_model
    from clipdb.dupes import find_duplicates

    root = tmp_path / "lib"
    root.mkdir()
    clip = video(root / "clip.mp4", 6, scenes=(4.0,))
    shutil.copy(clip, root / "copy.mp4")
    video(root / "other.mp4", 3, scenes=(1.0,), size=(64, 48))
    run([root], database, tiny_encoder)
    with database.connect() as conn:
        model = registered_model(conn, tiny_encoder.architecture, tiny_encoder.pretrained)
        assert model is not None
        result = find_duplicates(conn, model, tiers=("exact",))
    groups = [sorted(os.path.basename(m.image_path) for m in g.images) for g in result.groups]
    assert groups == [["clip.mp4", "copy.mp4"]]


def test_a_video_is_never_a_duplicate_of_itself_in_any_tier(database, tiny_encoder, tmp_path):
    """Its frames are rows of one file: near-identical, same sha256, never a group."""
    from test_ingest import run

    from clipdb.db.registry import registered_model
    from clipdb.dupes import find_duplicates

    root = tmp_path / "lib"
    root.mkdir()
    video(root / "still.mp4", 12, scenes=(4.0, 8.0))
    run([root], database, tiny_encoder)
    with database.connect() as conn:
        model = registered_model(conn, tiny_encoder.architecture, tiny_encoder.pretrained)
        assert model is not None
        frames = conn.execute(
            "SELECT count(*) FROM clipdb.images WHERE model_id = %s", (model.model_id,)
        ).fetchone()
        assert frames is not None and frames[0] >= 2
        result = find_duplicates(
            conn, model, tiers=("exact", "near", "similar"), similar_threshold=-1.0
        )
    assert result.groups == []


def test_a_moved_video_keeps_all_its_frames_under_the_new_path(database, tiny_encoder, tmp_path):
    from test_ingest import run

    root = tmp_path / "lib"
    root.mkdir()
    clip = video(root / "clip.mp4", 6, scenes=(4.0,))
    picture().save(root / "photo.jpg")
    run([root], database, tiny_encoder)
    clip.rename(root / "renamed.mp4")
    run([root], database, tiny_encoder, prune=True)
    with database.connect() as conn:
        rows = conn.execute(
            "SELECT path, frame_time FROM clipdb.images WHERE frame_time IS NOT NULL "
            "ORDER BY frame_time"
        ).fetchall()
    assert rows == [(str(root / "renamed.mp4"), 0.0), (str(root / "renamed.mp4"), 4.0)]


def test_plot_shows_a_video_hit_as_its_frame(tmp_path):
    from clipdb import viz
    from clipdb.db.queries import Hit

    clip = video(tmp_path / "clip.mp4", 6, scenes=(4.0,))
    frame = viz._thumbnail(f"{clip}@4.0")
    assert frame is not None and frame.size == (64, 64)
    assert viz._thumbnail(f"{tmp_path / 'gone.mp4'}@1") is None
    saved = viz.plot_results([Hit(1, str(clip), 0.9, 1, frame_time=4.0)], tmp_path / "p.png")
    assert Path(saved).stat().st_size > 0

"""scripts/demo.sh and scripts/setup.sh, run as a new user runs them, on a copy of the checkout."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from helpers import TINY_MODEL, copy_checkout, fresh_venv, make_images, outside_env, pip_install

from clipdb.db import Database


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout whose .venv is ready (setup.sh only checks it): clipdb installed
    editable, the test run's packages seen through a path entry."""
    copy = copy_checkout(tmp_path_factory.mktemp("clone") / "clipdb")
    pip_install(fresh_venv(copy / ".venv"), "-e", str(copy))
    return copy


def bomb_png(path: Path) -> None:
    """A PNG header claiming 100000 x 100000 pixels, and no pixels: ingest skips it."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(header))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


def demo(
    checkout: Path, folder: str, cwd: Path, database: Database, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    """scripts/demo.sh FOLDER from ``cwd``, with the tiny model and (unless ``env_vars`` say
    otherwise) random weights."""
    tiny = {"CLIPDB_MODEL": TINY_MODEL, "CLIPDB_PRETRAINED": "none", **env_vars}
    env = outside_env(CLIPDB_DATABASE_URL=database.url, **tiny)
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "demo.sh"), folder],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_demo_queries_with_an_image_it_indexed(
    checkout: Path, database: Database, tmp_path: Path
) -> None:
    """The folder's first file (bomb.png) is one ingest skips: the query is an indexed one."""
    photos = tmp_path / "photos"
    make_images(photos, 3)
    bomb_png(photos / "bomb.png")
    result = demo(checkout, str(photos), tmp_path, database)
    assert result.returncode == 0, result.stderr
    assert "setup: installing" not in result.stderr  # the ready .venv is only checked
    assert f"skipping {photos / 'bomb.png'}" in result.stderr
    assert f"images like {photos}/img_" in result.stdout
    assert f"{TINY_MODEL} (none), dim 32, 3 images" in result.stdout  # db status
    assert "\nNext: activate the environment" in result.stdout


@pytest.mark.slow
def test_demo_takes_a_folder_relative_to_the_callers_directory(
    checkout: Path, database: Database, tmp_path: Path
) -> None:
    make_images(tmp_path / "work" / "photos", 2)
    result = demo(checkout, "photos", tmp_path / "work", database)
    assert result.returncode == 0, result.stderr
    assert f"images like {tmp_path / 'work' / 'photos'}/img_" in result.stdout
    assert f'clipdb ingest "{tmp_path / "work" / "photos"}" --watch' in result.stdout


@pytest.mark.slow
def test_demo_without_weights_says_how_to_run_it_with_random_ones(
    checkout: Path, database: Database, tmp_path: Path
) -> None:
    """Weights out of reach (offline; here: a model with no standard weights): clipdb's line
    and then the demo's own rerun line, which CLIPDB_PRETRAINED=none makes work."""
    photos = tmp_path / "photos"
    make_images(photos, 1)
    result = demo(checkout, str(photos), tmp_path, database, CLIPDB_PRETRAINED="")
    assert result.returncode == 1
    assert "; rerun: CLIPDB_PRETRAINED=none clipdb ingest " in result.stderr
    demo_sh = checkout / "scripts" / "demo.sh"
    assert result.stderr.endswith(f"  CLIPDB_PRETRAINED=none bash {demo_sh} {photos}\n")


def test_setup_says_when_there_is_no_nvidia_driver(tmp_path: Path) -> None:
    """Before torch's ~4 GB CUDA build is fetched, setup.sh says how to get the CPU build."""
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    copy = copy_checkout(tmp_path / "clipdb")
    fresh_venv(copy / ".venv", with_packages=False)  # no torch, no pip: the install fails fast
    result = subprocess.run(
        ["bash", str(copy / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        env=outside_env(PIP_NO_INDEX="1", TORCH_INDEX=""),
        timeout=120,
    )
    assert result.returncode != 0
    assert "setup: no NVIDIA driver here" in result.stderr
    cpu_build = "TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/demo.sh ~/Pictures"
    assert cpu_build in result.stderr
    assert result.stderr.index(cpu_build) < result.stderr.index("installing torch")

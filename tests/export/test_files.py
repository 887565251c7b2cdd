"""Atomic file placement: temporary names, all-or-nothing folders, readable modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from milsdk.export.files import atomic_write, place_tree


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    def fail(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("boom")

    (tmp_path / "model.onnx").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "model.onnx", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and (
        tmp_path / "model.onnx"
    ).read_text() == "old"


def test_written_files_and_folders_get_normal_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a" / "f.txt", lambda tmp: Path(tmp).write_text("x"))
        source = tmp_path / "src"
        (source / "sub").mkdir(parents=True)
        (source / "sub" / "g.txt").write_text("y")
        os.chmod(source, 0o700)
        dest = place_tree(source, tmp_path / "dest")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (
        stat.S_IMODE(dest.stat().st_mode) == 0o755
        and stat.S_IMODE((dest / "sub" / "g.txt").stat().st_mode) == 0o644
    )


def test_place_tree_merges_into_an_existing_folder(tmp_path):
    source = tmp_path / "src"
    (source / "2").mkdir(parents=True)
    (source / "config.pbtxt").write_text("new")
    (source / "2" / "model.onnx").write_text("v2")
    dest = tmp_path / "repo" / "m"
    (dest / "1").mkdir(parents=True)
    (dest / "1" / "model.onnx").write_text("v1")
    (dest / "config.pbtxt").write_text("old")
    place_tree(source, dest)
    assert (dest / "config.pbtxt").read_text() == "new"
    assert (dest / "1" / "model.onnx").read_text() == "v1" and (dest / "2" / "model.onnx").read_text() == "v2"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]  # no staging folders left

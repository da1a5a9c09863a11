"""runtime/: atomic writes and the exception -> sentence helper every front end shares."""

from __future__ import annotations

import pytest

from napari_latentseg.io import VolumeIOError
from napari_latentseg.runtime.errors import BATCH_HINTS, DOCK_HINTS, UserError, explain
from napari_latentseg.runtime.files import atomic_path, atomic_write
from napari_latentseg.runtime.progress import Cancelled


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "stamp.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["stamp.json"]  # no temporary left
    with atomic_write(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["stamp.json"]


def test_atomic_write_never_overwrites_unless_asked(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        with atomic_write(target, "wb", overwrite=False) as fh:
            fh.write(b"other")
    assert target.read_bytes() == b"precious"
    fresh = tmp_path / "fresh.pt"
    with atomic_write(fresh, "wb", overwrite=False) as fh:
        fh.write(b"x")
    assert fresh.read_bytes() == b"x"


def test_atomic_path_keeps_extension_for_format_libraries(tmp_path):
    target = tmp_path / "overview.png"
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".overview.tmp-")
        assert tmp.name.endswith(".png")
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"


def test_atomic_write_refuses_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (VolumeIOError("/x/scan.nrrd: not a NRRD file"), "input", "/x/scan.nrrd: not a NRRD"),
        (ValueError("k must be between 2 and 64, got 1"), "input", "k must be between"),
        (UserError("--steps must be at least 1"), "input", "--steps"),
        (FileExistsError("out.nii.gz already exists"), "input", "already exists"),
        (Cancelled("segmentation was cancelled"), "cancelled", "cancelled"),
        (MemoryError(), "memory", "out of memory"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore"), "memory", "GPU"),
        (KeyError("spacing"), "failure", "KeyError: 'spacing'"),
    ],
)
def test_explain_one_line_per_kind(exc, kind, text):
    report = explain(exc)
    assert report.kind == kind
    assert text in report.message
    assert "\n" not in report.message
    assert report.expected == (kind != "failure")


def test_explain_hints_follow_the_front_end():
    oom = RuntimeError("CUDA out of memory")
    assert "Device (section 2)" in explain(oom, DOCK_HINTS).message
    assert "--device cpu" in explain(oom, BATCH_HINTS).message
    assert len(explain(ValueError("x" * 2000)).message) <= 500

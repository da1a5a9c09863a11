"""Autosaved annotations (napari_latentseg.recovery): naming, round trip, crash safety."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from pathlib import Path

import numpy as np
import pytest

from napari_latentseg import recovery

SHAPE = (48, 256, 256)  # 3 MB of random bytes: a save takes long enough to be killed mid-way


def test_folder_per_scan_source_and_shape(recovery_dir, tmp_path):
    # recovery_dir (conftest) sets $LATENTSEG_RECOVERY_DIR to a folder of this test
    a = recovery.scan_folder(str(tmp_path / "ct.nii.gz"), (4, 8, 8))
    assert a.parent == recovery_dir
    assert a == recovery.scan_folder(str(tmp_path / "x" / ".." / "ct.nii.gz"), (4, 8, 8))
    assert a != recovery.scan_folder(str(tmp_path / "ct.nii.gz"), (4, 8, 9))
    assert a != recovery.scan_folder(str(tmp_path / "mr.nii.gz"), (4, 8, 8))
    assert a != recovery.scan_folder("layer:ct.nii.gz", (4, 8, 8))
    assert not a.exists() and recovery.scan_folder("layer:s", (2, 2), create=True).is_dir()
    with pytest.raises(ValueError, match="source"):
        recovery.scan_key("", (2, 2))


def test_round_trip_with_classes_and_locks(recovery_dir):
    folder = recovery.scan_folder("layer:scan", (3, 5, 6))
    labels = np.zeros((3, 5, 6), np.uint8)
    labels[1, 2:4, 1:3] = 2
    classes = [{"value": 1, "name": "background", "color": [0.1, 0.2, 0.3]},
               {"value": 2, "name": "liver", "color": [1.0, 0.0, 0.0]}]
    path = recovery.save_snapshot(folder, "scan annotations", labels, classes=classes,
                                  locked=[2], source="layer:scan")
    assert path.parent == folder and path.name == "scan_annotations.npz"
    snap = recovery.load_snapshot(path)
    np.testing.assert_array_equal(snap.labels, labels)
    assert snap.labels.dtype == np.uint8
    assert snap.name == "scan annotations" and snap.locked == [2] and snap.painted == 4
    assert [c["name"] for c in snap.classes] == ["background", "liver"]
    assert snap.classes[1]["color"] == [1.0, 0.0, 0.0]
    assert snap.source == "layer:scan" and snap.saved_at > 0

    time.sleep(0.01)
    other = recovery.save_snapshot(folder, "second", labels)
    assert recovery.list_snapshots(folder) == [other, path]  # newest first
    assert recovery.discard_snapshots([path, path]) == 1
    assert recovery.list_snapshots(folder) == [other]


def test_bad_input_is_refused(recovery_dir, tmp_path):
    with pytest.raises(ValueError, match="integer"):
        recovery.save_snapshot(tmp_path, "a", np.zeros((4, 4), np.float32))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        recovery.load_snapshot(bad)


def _volume(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, SHAPE, dtype=np.uint8)


def _save_forever(folder: str, start: int) -> None:
    """The child: save version ``start``, ``start + 1``... until killed."""
    i = start
    while True:
        recovery.save_snapshot(folder, "ann", _volume(i), locked=[i])
        i += 1


def test_kill_9_mid_save_leaves_a_complete_version(tmp_path):
    """A writer killed at random points leaves the previous or the new complete copy."""
    folder = tmp_path / "scan"
    target = folder / "ann.npz"
    ctx = mp.get_context("spawn")  # no fork of a process that may hold Qt or torch threads
    rng = random.Random(0)
    last, mid_save = -1, 0
    for _ in range(6):
        proc = ctx.Process(target=_save_forever, args=(str(folder), last + 1), daemon=True)
        proc.start()
        try:
            deadline = time.monotonic() + 60
            seen = recovery.load_snapshot(target).locked[0] if target.exists() else -1
            # Wait for at least one new complete save, then for the next save to begin.
            while (not target.exists() or recovery.load_snapshot(target).locked[0] == seen) \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            while not list(folder.glob(".ann.tmp-*")) and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            proc.kill()  # SIGKILL: no cleanup runs in the child
            proc.join(10)
        leftovers = list(folder.glob(".ann.tmp-*"))
        mid_save += bool(leftovers)
        for tmp in leftovers:  # what the dock's next save would clean up
            Path(tmp).unlink()
        snap = recovery.load_snapshot(target)
        version = snap.locked[0]
        assert version >= max(last, 0)
        np.testing.assert_array_equal(snap.labels, _volume(version))
        last = version
    assert mid_save >= 1, "no kill landed during a save: the test checked nothing"

"""Cohorts: `latentseg batch` on a LocalCluster, reruns that skip finished scans, streamed and
distributed fits."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from napari_latentseg.batch.manifest import ManifestError, ScanJob, read_manifest
from napari_latentseg.cli import main
from napari_latentseg.io import read_volume, save_volume

N_GOOD = 4


def _phantom_scan(path: Path, seed: int, direction=None):
    from napari_latentseg.data.phantom import make_phantom

    ph = make_phantom((10, 32, 32), spacing=(4.0, 3.0, 3.0), seed=seed)
    geo = {"spacing": (4.0, 3.0, 2.5), "origin": (float(seed), -5.0, 7.5),
           "direction": direction if direction is not None else np.eye(3)}
    save_volume(path, ph.image, **geo)
    return ph, geo


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small phantoms (one y-flipped) and a corrupt file; annotations in their own folder."""
    from napari_latentseg.data.phantom import annotation_from_labels

    root = tmp_path_factory.mktemp("cohort")
    scans, anns = root / "scans", root / "annotations"
    scans.mkdir()
    anns.mkdir()
    for i in range(N_GOOD):
        direction = np.diag([1.0, -1.0, 1.0]) if i == 1 else None
        ph, geo = _phantom_scan(scans / f"s{i}.nii.gz", seed=i, direction=direction)
        save_volume(anns / f"s{i}.nii.gz", annotation_from_labels(ph.labels, [3, 6]),
                    kind="labels", **geo)
    (scans / "bad.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file" * 40)
    (scans / "README.txt").write_text("not a scan")
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, tiny_model) -> Path:
    from napari_latentseg.models.checkpoint import save_model

    return save_model(tiny_model, tmp_path_factory.mktemp("model") / "vae.pt")


def _summary(outdir: Path) -> dict[str, dict]:
    with open(outdir / "summary.csv", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def _mtimes(outdir: Path) -> dict[str, int]:
    return {str(p.relative_to(outdir)): p.stat().st_mtime_ns
            for p in outdir.rglob("*") if p.is_file() and p.name != "summary.csv"}


# --------------------------------------------------------------------------- manifests
def test_folder_manifest_lists_scans_and_ignores_the_rest(cohort):
    jobs, ignored = read_manifest(cohort / "scans")
    assert [j.id for j in jobs] == ["bad"] + [f"s{i}" for i in range(N_GOOD)]
    assert ignored == ["README.txt"]
    assert all(Path(j.image).is_absolute() and j.annotations is None for j in jobs)
    jobs, _ = read_manifest(cohort / "scans", annotations_dir=cohort / "annotations")
    assert {j.id: bool(j.annotations) for j in jobs} == {
        "bad": False, **{f"s{i}": True for i in range(N_GOOD)}}


def test_csv_manifest_resolves_relative_paths_and_derives_ids(tmp_path):
    (tmp_path / "sub").mkdir()
    m = tmp_path / "sub" / "cohort.csv"
    m.write_text("Scan;annotations;id\n"
                 "../a.nii.gz;ann/a.nii.gz;patient-1\n"
                 "\n"
                 "# a comment line\n"
                 "/data/b b.nrrd;;\n")
    jobs, _ = read_manifest(m)
    assert jobs == [
        ScanJob("patient-1", str(tmp_path / "a.nii.gz"), str(tmp_path / "sub/ann/a.nii.gz")),
        ScanJob("b_b", "/data/b b.nrrd", None),
    ]


@pytest.mark.parametrize("text, message", [
    ("path_to_scan,id\na.nii.gz,1\n", "no image column"),
    ("image,id\na.nii.gz,x\nb.nii.gz,X\n", "ids must be unique: 'x' on lines 2, 3"),
    ("image\ndir1/a.nii.gz\ndir2/a.nii.gz\n", "add an id column"),
    ("image,id\na.nii.gz,../evil\n", "'../evil' names the scan's output folder"),
    ("image,annotations\n,a.nii.gz\n", "line 2: no image path"),
    ("image\n", "lists no scan"),
    ("", "the manifest is empty"),
])
def test_manifest_errors_say_what_is_wrong(tmp_path, text, message):
    m = tmp_path / "m.csv"
    m.write_text(text)
    with pytest.raises(ManifestError, match=re.escape(message)):
        read_manifest(m)


def test_manifest_errors_for_inputs(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no scans found"):
        read_manifest(tmp_path)
    (tmp_path / "x.nii").write_bytes(b"")
    (tmp_path / "x.nii.gz").write_bytes(b"")
    with pytest.raises(ManifestError, match="share an output folder"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match="folder of scans or a CSV"):
        read_manifest(tmp_path / "x.nii")


# --------------------------------------------------------------------------- LocalCluster
@pytest.mark.slow
def test_batch_on_two_workers_records_failures_and_reruns_skip_finished_work(
        cohort, model_file, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["batch", str(cohort / "scans"), "-m", str(model_file), "--task", "reconstruct",
            "-o", str(out), "-q"]
    args = base + ["--workers", "2", "--dashboard", "none"]
    assert main(args) == 1  # one scan failed; the others were processed
    captured = capsys.readouterr()
    assert "LocalCluster of 2 workers" in captured.err
    assert "4 done, 0 skipped, 1 failed of 5 scans" in captured.out
    rows = _summary(out)
    assert rows["bad"]["status"] == "failed"
    assert "bad.nii.gz" in rows["bad"]["error"] and "\n" not in rows["bad"]["error"]
    for i in range(N_GOOD):
        row = rows[f"s{i}"]
        assert row["status"] == "done", row
        assert row["worker"] in {"0", "1"} and row["device"] == "cpu"
        assert float(row["mean_error"]) > 0 and int(row["anomaly_candidates"]) >= 0
        src = read_volume(cohort / "scans" / f"s{i}.nii.gz")
        for name in ("reconstruction", "error", "anomalies"):
            o = read_volume(out / f"s{i}" / f"{name}.nii.gz")
            assert o.shape == src.shape
            np.testing.assert_allclose(o.spacing, src.spacing, rtol=1e-5)
            np.testing.assert_allclose(o.origin, src.origin, atol=1e-4)
            np.testing.assert_allclose(o.direction, src.direction, atol=1e-6)
    assert not [p for p in out.rglob(".*")]  # no temporary file left behind
    before = _mtimes(out)

    # Rerun: every finished scan is skipped, nothing is rewritten; the corrupt one fails again.
    assert main(args) == 1
    assert "0 done, 4 skipped, 1 failed" in capsys.readouterr().out
    rows = _summary(out)
    assert [rows[f"s{i}"]["status"] for i in range(N_GOOD)] == ["skipped"] * N_GOOD
    assert rows["s2"]["mean_error"]  # metrics of skipped scans come from their stamps
    assert _mtimes(out) == before

    # A scan with a missing output is redone, and only that one (here in this process).
    (out / "s2" / "error.nii.gz").unlink()
    assert main(base + ["--workers", "0"]) == 1
    rows = _summary(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "bad": "failed", "s0": "skipped", "s1": "skipped", "s2": "done", "s3": "skipped"}
    after = _mtimes(out)
    assert {k for k in after if after[k] != before.get(k)} == {
        "s2/done.json", "s2/error.nii.gz", "s2/reconstruction.nii.gz", "s2/anomalies.nii.gz",
        "s2/candidates.csv"}


def _crash_on(job, *args):
    """Per-scan function for the worker-death test: kills its worker for scan 'crash'."""
    from napari_latentseg.batch.worker import process_scan

    if job.id == "crash":
        os._exit(3)
    return process_scan(job, *args)


@pytest.mark.slow
def test_existing_scheduler_and_a_dying_worker(cohort, model_file, tmp_path, capsys):
    """--scheduler ADDRESS (as dask-jobqueue gives); a worker that dies fails its scan only."""
    import dask
    from distributed import LocalCluster

    from napari_latentseg.batch.runner import WORKER_DIED, run_batch
    from napari_latentseg.batch.worker import BatchOptions

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    try:
        address = cluster.scheduler_address
        scan = str(cohort / "scans" / "s0.nii.gz")
        jobs = [ScanJob("crash", scan), ScanJob("fine", scan)]
        summary = run_batch(jobs, model_file, BatchOptions(), tmp_path / "a", scheduler=address,
                            fn=_crash_on)
        status = {r["id"]: (r["status"], r["error"]) for r in summary.rows}
        assert status == {"crash": ("failed", WORKER_DIED), "fine": ("done", "")}
        assert _summary(tmp_path / "a")["crash"]["error"] == WORKER_DIED

        m = tmp_path / "two.csv"
        m.write_text(f"image\n{cohort}/scans/s1.nii.gz\n{cohort}/scans/s3.nii.gz\n")
        code = main(["batch", str(m), "-m", str(model_file), "--task", "cluster", "-k", "2",
                     "-o", str(tmp_path / "b"), "--scheduler", address, "-q"])
        assert code == 0
        assert f"dask scheduler {address}" in capsys.readouterr().err
        assert {r["status"] for r in _summary(tmp_path / "b").values()} == {"done"}
    finally:
        cluster.close()


# --------------------------------------------------------------------------- in process
def test_segment_from_a_csv_manifest_with_annotations(cohort, model_file, tmp_path, capsys):
    m = tmp_path / "cohort.csv"
    rel = os.path.relpath(cohort, tmp_path)
    m.write_text("id,image,annotations\n"
                 f"p0,{rel}/scans/s0.nii.gz,{rel}/annotations/s0.nii.gz\n"
                 f"p1,{rel}/scans/s1.nii.gz,{rel}/annotations/s1.nii.gz\n"
                 f"p3,{rel}/scans/s3.nii.gz,\n")
    out = tmp_path / "seg"
    code = main(["batch", str(m), "-m", str(model_file), "--task", "segment", "-o", str(out),
                 "--workers", "0", "--format", "nrrd"])
    assert code == 1
    rows = _summary(out)
    assert rows["p3"]["status"] == "failed" and "no annotations" in rows["p3"]["error"]
    err = capsys.readouterr().err  # not a terminal: a plain line per scan, no bar
    assert "\r" not in err and "p3: failed: no annotations" in err
    lines = re.findall(r"scans: (\d)/3 (p\d) (\w+)", err)
    assert sorted(n for n, _, _ in lines) == ["1", "2", "3"], err
    assert sorted((i, st) for _, i, st in lines) == [("p0", "done"), ("p1", "done"),
                                                     ("p3", "failed")], err
    for sid, src in (("p0", "s0"), ("p1", "s1")):
        assert rows[sid]["status"] == "done"
        image = read_volume(cohort / "scans" / f"{src}.nii.gz")
        labels = read_volume(out / sid / "labels.nrrd")
        assert labels.shape == image.shape
        np.testing.assert_allclose(labels.direction, image.direction, atol=1e-6)
        assert read_volume(out / sid / "uncertainty.nrrd").shape == image.shape
        # Volumes per label add up to the scan's volume.
        vols = {k: float(v) for k, v in rows[sid].items() if k.startswith("volume_ml_") and v}
        assert len(vols) >= 2
        total = image.data.size * np.prod(image.spacing) / 1000
        assert sum(vols.values()) == pytest.approx(total, rel=1e-3)
        counts = np.bincount(labels.data.ravel())
        lab = max(vols, key=vols.get).rsplit("_", 1)[1]
        assert vols[f"volume_ml_{lab}"] == pytest.approx(
            counts[int(lab)] * np.prod(image.spacing) / 1000, rel=1e-3)
    assert not (out / "p3").exists()


def test_reconstruct_anomaly_options_score_maps_and_candidate_tables(
        cohort, model_file, tmp_path, capsys):
    from napari_latentseg.batch.worker import BatchOptions

    m = tmp_path / "two.csv"
    m.write_text(f"image\n{cohort}/scans/s0.nii.gz\n{cohort}/scans/s1.nii.gz\n")
    out = tmp_path / "out"
    base = ["batch", str(m), "-m", str(model_file), "--task", "reconstruct", "-o", str(out),
            "--workers", "0", "-q", "--anomaly-method", "median", "--anomaly-map"]
    assert main([*base, "--fpr", "0.05"]) == 0
    rows = _summary(out)
    for sid in ("s0", "s1"):  # s1 has a flipped y axis
        row = rows[sid]
        assert row["status"] == "done" and row["anomaly_method"] == "median (self)"
        image = read_volume(cohort / "scans" / f"{sid}.nii.gz")
        score = read_volume(out / sid / "anomaly_map.nii.gz")
        labels = read_volume(out / sid / "anomalies.nii.gz")
        assert score.shape == image.shape and score.data.min() >= 0
        np.testing.assert_allclose(score.direction, image.direction, atol=1e-6)
        with open(out / sid / "candidates.csv", newline="") as fh:
            table = list(csv.DictReader(fh))
        n = int(row["anomaly_candidates"])
        assert n > 0 and len(table) == n == labels.data.max()
        assert sum(float(r["volume_ml"]) for r in table) == pytest.approx(
            float(row["anomalous_volume_ml"]), abs=1e-3)
        first = labels.data == 1  # the highest peak, the table's first row
        centre = np.argwhere(first).mean(axis=0)
        world = image.affine[:3, :3] @ centre + image.affine[:3, 3]
        np.testing.assert_allclose([float(table[0][f"lps_{a}_mm"]) for a in "zyx"], world,
                                   atol=0.02)
    # A stricter threshold is another result: every scan is redone, with fewer candidates.
    assert main([*base, "--fpr", "0.001"]) == 0
    strict = _summary(out)
    for sid in ("s0", "s1"):
        assert strict[sid]["status"] == "done"
        assert int(strict[sid]["anomaly_candidates"]) < int(rows[sid]["anomaly_candidates"])
    # Bad options are refused before any work; the defaults keep older runs' stamps valid.
    assert main([*base, "--fpr", "2"]) == 2
    assert main([*base[:-3], "--anomaly-method", "nope"]) == 2
    assert "unknown anomaly method 'nope'" in capsys.readouterr().err
    assert BatchOptions().result_key() == {"task": "reconstruct", "format": "nii.gz",
                                           "tile": 512}
    # Keeping the surface's findings is another result (its own stamp).
    assert BatchOptions(lower_surface=False).result_key()["lower_surface"] is False


def test_changed_options_model_or_outputs_are_redone(cohort, model_file, tmp_path):
    import torch

    from napari_latentseg.models.checkpoint import load_model, save_model

    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("s0", "s3"):
        (scans / f"{name}.nii.gz").write_bytes((cohort / "scans" / f"{name}.nii.gz").read_bytes())
    out = tmp_path / "out"

    def run(*extra, model=model_file) -> dict[str, str]:
        assert main(["batch", str(scans), "-m", str(model), "--task", "cluster", "-o", str(out),
                     "--workers", "0", "-q", *extra]) == 0
        return {k: r["status"] for k, r in _summary(out).items()}

    assert run("-k", "3") == {"s0": "done", "s3": "done"}
    assert set(_summary(out)["s0"]) >= {"volume_ml_1", "volume_ml_2", "volume_ml_3"}
    assert run("-k", "3") == {"s0": "skipped", "s3": "skipped"}
    assert run("-k", "2") == {"s0": "done", "s3": "done"}  # other options: other outputs
    assert "volume_ml_3" not in _summary(out)["s0"]
    # Same size, other bytes: found by --verify only.
    f = out / "s0" / "labels.nii.gz"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert run("-k", "2") == {"s0": "skipped", "s3": "skipped"}
    assert run("-k", "2", "--verify") == {"s0": "done", "s3": "skipped"}
    # A scan that changed is redone; the other one is not.
    (scans / "s3.nii.gz").write_bytes((cohort / "scans" / "s2.nii.gz").read_bytes())
    assert run("-k", "2") == {"s0": "skipped", "s3": "done"}
    # The same model under another name is the same model; other weights redo everything.
    same = save_model(load_model(model_file), tmp_path / "same.pt")
    assert run("-k", "2", model=same) == {"s0": "skipped", "s3": "skipped"}
    changed = load_model(model_file)
    with torch.no_grad():
        next(changed.net.parameters()).add_(1e-3)
    other = save_model(changed, tmp_path / "other.pt")
    assert run("-k", "2", model=other) == {"s0": "done", "s3": "done"}


def test_batch_without_dask_says_how_to_install_it(cohort, model_file, tmp_path, monkeypatch,
                                                    capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)
    code = main(["batch", str(cohort / "scans"), "-m", str(model_file), "--task", "reconstruct",
                 "-o", str(tmp_path / "o")])
    assert code == 2
    assert "pip install 'napari-latentseg[batch]'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.csv").exists()


def test_batch_refuses_a_bad_model_before_any_work(cohort, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    code = main(["batch", str(cohort / "scans"), "-m", str(junk), "--task", "cluster", "-o",
                 str(tmp_path / "o"), "--workers", "0"])
    assert code == 2
    assert "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- cohort fit
@pytest.fixture(scope="module")
def six_scans(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("six")
    paths = []
    for i in range(6):
        _phantom_scan(folder / f"c{i}.nii.gz", seed=10 + i)
        paths.append(folder / f"c{i}.nii.gz")
    return paths


def test_fit_streams_scans_with_at_most_m_in_memory(six_scans, monkeypatch):
    from napari_latentseg.engine.stream import VolumeSource
    from napari_latentseg.engine.train import FitOptions, fit

    monkeypatch.setenv("LATENTSEG_NUM_THREADS", "1")  # tiny network: threads only cost here

    alive = {"now": 0, "most": 0}

    def gone() -> None:
        alive["now"] -= 1

    class CountingSource(VolumeSource):
        """Counts prepared scans that really exist (not only those in the cache)."""

        def _load(self, i):
            v = super()._load(i)
            alive["now"] += 1
            alive["most"] = max(alive["most"], alive["now"])
            weakref.finalize(v, gone)
            return v

    src = CountingSource([str(p) for p in six_scans], max_in_memory=2, rotate_every=2)
    res = fit(src, "tiny", FitOptions(steps=30, eval_every=10, seed=0))
    assert alive["most"] <= 2 and src.peak_resident <= 2
    assert src.loads > 6 and src.evictions >= src.loads - 2  # scans were re-read in turn
    assert all(info is not None for info in src.info)
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])
    assert res.model.anomaly["threshold"] > 0
    assert res.model.info["streamed"]["scans"] == 6


def test_fit_command_streams_more_scans_than_it_may_hold(six_scans, tmp_path, capsys):
    from napari_latentseg.models.checkpoint import load_model

    out = tmp_path / "m.pt"
    assert main(["fit", *map(str, six_scans), "-o", str(out), "--config", "tiny", "--steps",
                 "6", "--max-volumes-in-memory", "2", "-q"]) == 0
    captured = capsys.readouterr()
    assert "streaming 6 scans from disk, at most 2 in memory" in captured.err
    info = load_model(out).info
    assert info["streamed"]["peak_resident"] <= 2 and len(info["fitted_on"]) == 6


@pytest.mark.slow
@pytest.mark.parametrize("budget", [["--steps", "6"], ["--minutes", "0.2"]],
                         ids=["steps", "minutes"])
def test_distributed_fit_with_torchrun_two_cpu_processes(six_scans, tmp_path, budget):
    """Ranks end with the same weights; with a time budget the cosine decay follows the
    slowest rank's clock, so every rank's optimiser uses the same learning rate."""
    from napari_latentseg.models.checkpoint import load_model

    out = tmp_path / "models"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "napari_latentseg.cli", "fit", *map(str, six_scans[:3]), "-o",
           str(out / "vae.pt"), "--config", "tiny", *budget, "--device", "cpu",
           "--max-volumes-in-memory", "2", "-q"]
    env = dict(os.environ, LATENTSEG_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert [p.name for p in out.iterdir()] == ["vae.pt"]  # rank 0 alone writes
    model = load_model(out / "vae.pt")
    assert model.info["distributed"] == {"world_size": 2, "backend": "gloo"}
    found = re.findall(r"rank (\d)/2: (\d+) steps, last loss ([\d.]+), parameter checksum "
                       r"(\w+)", log)
    ranks = {rank: (loss, checksum) for rank, _, loss, checksum in found}
    assert len({n for _, n, _, _ in found}) == 1  # every rank stopped at the same step
    assert set(ranks) == {"0", "1"}, log[-3000:]
    # Each rank trained on its own crops (its own loss), yet the weights are the same.
    assert ranks["0"][0] != ranks["1"][0]
    assert ranks["0"][1] == ranks["1"][1]
    assert log.count("saved ") == 1


def test_segment_with_anomaly_maps_from_a_reconstruct_folder(cohort, model_file, tmp_path,
                                                             capsys):
    """`--anomaly-maps FOLDER` reads <id>/anomaly_map.<ext> (a reconstruct run's layout) as
    a forest column; the map is an input of the stamp, so a changed map redoes the scan."""
    from napari_latentseg.batch.manifest import read_manifest

    maps = tmp_path / "rec"
    for i in (0, 2):  # s0 and s2 have a map, s3 none
        image = read_volume(cohort / "scans" / f"s{i}.nii.gz")
        score = np.linspace(0, 1, image.data.size, dtype=np.float32).reshape(image.shape)
        (maps / f"s{i}").mkdir(parents=True)
        save_volume(maps / f"s{i}" / "anomaly_map.nii.gz", score, image.geometry())
    jobs, _ = read_manifest(cohort / "scans", annotations_dir=cohort / "annotations",
                            anomaly_maps_dir=maps)
    found = {j.id: j.anomaly_map for j in jobs}
    assert found["s0"].endswith("s0/anomaly_map.nii.gz") and found["s3"] is None
    m = tmp_path / "cohort.csv"
    m.write_text("id,image,annotations,anomaly_map\n"
                 f"s0,{cohort}/scans/s0.nii.gz,{cohort}/annotations/s0.nii.gz,\n"
                 f"s3,{cohort}/scans/s3.nii.gz,{cohort}/annotations/s3.nii.gz,\n")
    base = ["batch", str(m), "-m", str(model_file), "--task", "segment", "--workers", "0"]
    assert main(base + ["-o", str(tmp_path / "plain")]) == 0
    out = tmp_path / "seg"
    assert main(base + ["-o", str(out), "--anomaly-maps", str(maps)]) == 0
    assert "1 of 2 scans have an anomaly map" in capsys.readouterr().err
    stamp = json.loads((out / "s0" / "done.json").read_text())
    assert stamp["anomaly_map"] == found["s0"]
    assert "anomaly_map" not in json.loads((out / "s3" / "done.json").read_text())
    with_map = read_volume(out / "s0" / "labels.nii.gz").data
    plain = read_volume(tmp_path / "plain" / "s0" / "labels.nii.gz").data
    assert not np.array_equal(with_map, plain)  # the column reached the forest
    np.testing.assert_array_equal(read_volume(out / "s3" / "labels.nii.gz").data,
                                  read_volume(tmp_path / "plain" / "s3" / "labels.nii.gz").data)
    # A rerun skips both; a changed map redoes its scan only.
    assert main(base + ["-o", str(out), "--anomaly-maps", str(maps), "-q"]) == 0
    assert {r["status"] for r in _summary(out).values()} == {"skipped"}
    image = read_volume(cohort / "scans" / "s0.nii.gz")
    save_volume(maps / "s0" / "anomaly_map.nii.gz", np.zeros(image.shape, np.float32),
                overwrite=True, geometry=image.geometry())
    assert main(base + ["-o", str(out), "--anomaly-maps", str(maps), "-q"]) == 0
    rows = _summary(out)
    assert rows["s0"]["status"] == "done" and rows["s3"]["status"] == "skipped"
    # Only segment reads maps; a missing folder is one clear error.
    assert main(["batch", str(m), "-m", str(model_file), "--task", "cluster", "-o",
                 str(tmp_path / "c"), "--anomaly-maps", str(maps), "-q"]) == 2
    assert "--anomaly-maps is an input of --task segment" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "x"), "--anomaly-maps", str(tmp_path / "no")]) == 2
    assert "anomaly maps folder not found" in capsys.readouterr().err

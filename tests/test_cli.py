"""The `latentseg` command line: outputs in the input's geometry, clear errors, no overwrite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_latentseg.cli import EXIT_USAGE, main
from napari_latentseg.io import read_volume, save_volume


@pytest.fixture(scope="module")
def scan(tmp_path_factory, small_phantom) -> Path:
    """The small phantom as NIfTI with a non-trivial geometry (flipped y, offset origin)."""
    folder = tmp_path_factory.mktemp("scan")
    direction = np.diag([1.0, -1.0, 1.0])
    return save_volume(folder / "head.nii.gz", small_phantom.image, spacing=(4.0, 2.0, 1.5),
                       origin=(-20.0, 30.0, -12.5), direction=direction)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, scan) -> Path:
    out = tmp_path_factory.mktemp("model") / "vae.pt"
    assert main(["fit", str(scan), "-o", str(out), "--config", "tiny", "--steps", "6",
                 "--quiet"]) == 0
    return out


def _same_geometry(a, b) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-4)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def test_fit_writes_a_model_and_never_overwrites(model_file, scan, capsys):
    assert model_file.is_file()
    before = model_file.read_bytes()
    assert main(["fit", str(scan), "-o", str(model_file), "--config", "tiny", "--steps", "2",
                 "-q"]) == 0
    err = capsys.readouterr().err
    assert "never overwritten" in err
    assert model_file.read_bytes() == before
    assert model_file.with_name("vae-v2.pt").is_file()


def test_fit_records_the_learning_rate_recipe(model_file, scan, tmp_path):
    from napari_latentseg.models.checkpoint import load_model

    default = load_model(model_file).info
    assert (default["options"]["lr"], default["options"]["lr_schedule"]) == (2e-3, "cosine")
    assert default["decoder_steps"] == 6  # as many as --steps
    out = tmp_path / "old.pt"
    assert main(["fit", str(scan), "-o", str(out), "--config", "tiny", "--steps", "2",
                 "--lr", "1e-3", "--lr-schedule", "constant", "--decoder-steps", "0",
                 "-q"]) == 0
    old = load_model(out).info
    assert (old["options"]["lr"], old["options"]["lr_schedule"]) == (1e-3, "constant")
    assert old["decoder_steps"] == 0
    assert main(["fit", str(scan), "-o", str(out), "--decoder-steps", "-1"]) == EXIT_USAGE


def test_reconstruct_outputs_keep_the_input_geometry(model_file, scan, tmp_path):
    out, err, anom = tmp_path / "rec.nii.gz", tmp_path / "err.nrrd", tmp_path / "anom.nii.gz"
    code = main(["reconstruct", str(scan), "-m", str(model_file), "-o", str(out),
                 "--error", str(err), "--anomalies", str(anom), "-q"])
    assert code == 0
    src = read_volume(scan)
    for p in (out, err, anom):
        _same_geometry(read_volume(p), src)
    assert np.issubdtype(read_volume(anom).data.dtype, np.integer)


def test_anomaly_map_and_candidates(model_file, scan, tmp_path, capsys):
    out, score, anom = tmp_path / "rec.nii.gz", tmp_path / "score.nii.gz", tmp_path / "a.nrrd"
    code = main(["reconstruct", str(scan), "-m", str(model_file), "-o", str(out),
                 "--anomaly-map", str(score), "--anomalies", str(anom), "-q"])
    assert code == 0
    src = read_volume(scan)
    s, a = read_volume(score), read_volume(anom)
    _same_geometry(s, src)
    assert s.data.dtype.kind == "f" and np.isfinite(s.data).all() and s.data.min() >= 0
    printed = capsys.readouterr().out
    assert "anomaly scoring:" in printed and "candidates" in printed
    assert "inside the head's surface" in printed  # the denoiser's fade, said
    n = int(re.search(r"(\d+) candidates,", printed).group(1))
    assert len(np.unique(a.data[a.data > 0])) == n
    # The candidate table (a lenient threshold, so that there are candidates to check).
    table = tmp_path / "candidates.csv"
    assert main(["reconstruct", str(scan), "-m", str(model_file), "-o",
                 str(tmp_path / "r1.nii.gz"), "--anomaly-method", "median", "--fpr", "0.05",
                 "--anomaly-map", str(tmp_path / "s1.nii.gz"), "--anomalies",
                 str(tmp_path / "a1.nii.gz"), "--candidates", str(table), "-q"]) == 0
    n1 = int(re.search(r"(\d+) candidates,", capsys.readouterr().out).group(1))
    assert n1 > 0
    _check_candidate_table(table, read_volume(tmp_path / "a1.nii.gz"),
                           read_volume(tmp_path / "s1.nii.gz"), n1)
    assert main(["reconstruct", str(scan), "-m", str(model_file), "-o",
                 str(tmp_path / "r2.nii.gz"), "--fpr", "2", "-q"]) == 2
    # The denoiser's findings mirrored on both sides of the head are kept on request.
    kept = tmp_path / "kept.nii.gz"
    assert main(["reconstruct", str(scan), "-m", str(model_file), "-o",
                 str(tmp_path / "r3.nii.gz"), "--anomaly-map", str(kept), "--keep-symmetric",
                 "--keep-surface", "-q"]) == 0
    k = read_volume(kept)
    _same_geometry(k, src)
    assert np.isfinite(k.data).all() and not np.array_equal(k.data, s.data)
    # ... and near the head's surface: scored there only with --keep-surface.
    assert ((k.data > 0) & (s.data == 0)).sum() > ((s.data > 0) & (k.data == 0)).sum()


def _check_candidate_table(table: Path, labels, score, n: int) -> None:
    """Each row of the candidate table matches its component in the label volume: voxels,
    peak score, and its centre mapped to world LPS mm through the scan's geometry."""
    import csv

    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == list(range(1, n + 1))
    affine = labels.affine
    for r in rows:
        mask = labels.data == int(r["id"])
        assert int(r["voxels"]) == mask.sum()
        assert float(r["peak_score"]) == pytest.approx(score.data[mask].max(), abs=2e-3)
        centre = np.argwhere(mask).mean(axis=0)
        np.testing.assert_allclose([float(r[f"voxel_{a}"]) for a in "zyx"], centre, atol=0.01)
        world = affine[:3, :3] @ centre + affine[:3, 3]  # (z, y, x)
        np.testing.assert_allclose([float(r[f"lps_{a}_mm"]) for a in "zyx"], world,
                                   atol=0.02)


def test_existing_outputs_are_refused_before_any_work(model_file, scan, tmp_path, capsys):
    out = tmp_path / "rec.nii.gz"
    out.write_bytes(b"precious")
    code = main(["reconstruct", str(scan), "-m", str(model_file), "-o", str(out), "-q"])
    assert code == 2
    assert out.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "{missing}", "-o", "{tmp}/m.pt"], "no such file"),
        (["fit", "{junk}", "-o", "{tmp}/m.pt"], "{junk_name}"),
        (["fit", "{scan}", "-o", "{tmp}/m.pt", "--config", "nope"], "unknown configuration"),
        (["reconstruct", "{scan}", "-m", "{junk}", "-o", "{tmp}/r.nii.gz"], "model file"),
        (["reconstruct", "{scan}", "-m", "{model}", "-o", "{tmp}/r.nii.gz", "--device", "cuda"],
         "cuda"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, message, scan, model_file, tmp_path,
                                                   capsys):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    if message == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA, so --device cuda is valid")
    fmt = {"missing": tmp_path / "nope.nii.gz", "tmp": tmp_path, "junk": junk, "scan": scan,
           "model": model_file, "junk_name": junk.name}
    code = main([a.format(**fmt) for a in args])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.count("\n") == 0, err
    assert "Traceback" not in err
    assert message.format(**fmt).lower() in err.lower()


def test_entry_point_is_installed():
    exe = Path(sys.executable).with_name("latentseg")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for cmd in ("fit", "reconstruct"):
        assert cmd in res.stdout


def test_info_lists_configurations(capsys, model_file):
    assert main(["info"]) == 0
    assert "cpu-2d" in capsys.readouterr().out
    assert main(["info", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out
    assert "fitted on MR scans;" in out  # no header: the intensities said MR
    # The stored error threshold, rounded and said what it is (not a bare 16-digit float).
    assert re.search(r"reconstruction-error threshold \d\.\d+(e-\d+)? \(the fit data's "
                     r"[\d.]+th percentile\)", out), out


@pytest.mark.parametrize("in_memory", [2, 1])
def test_fit_normative_statistics_score_a_new_scan(tmp_path, capsys, in_memory, chest_ct):
    """``fit --normative`` stores statistics of the fit's scans (read again from disk when
    streamed) in the model; ``reconstruct`` then scores a new scan against them."""
    from napari_latentseg.models.checkpoint import load_model

    paths = [save_volume(tmp_path / f"ref{i}.nrrd", chest_ct(i), spacing=(3.0, 1.5, 1.5))
             for i in range(2)]
    out = tmp_path / "vae.pt"
    assert main(["fit", *map(str, paths), "-o", str(out), "--config", "tiny", "--steps", "2",
                 "--decoder-steps", "0", "--normative", "--max-volumes-in-memory",
                 str(in_memory), "-q"]) == 0
    assert "normative statistics: contrast of 2 scan(s)" in capsys.readouterr().err
    norm = load_model(out).anomaly["normative"]
    assert norm["method"] == "contrast" and norm["n_scans"] == 2
    new = save_volume(tmp_path / "new.nrrd", chest_ct(5, nodule=True), spacing=(3.0, 1.5, 1.5))
    assert main(["reconstruct", str(new), "-m", str(out), "-o", str(tmp_path / "r.nrrd"),
                 "--anomaly-map", str(tmp_path / "s.nrrd")]) == 0
    assert "anomaly scoring: contrast (normative)" in capsys.readouterr().out
    score = read_volume(tmp_path / "s.nrrd").data
    assert score[3:5, 22:26, 18:22].mean() > np.percentile(score[:, 12:36, 12:36], 95)
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert ("normative anomaly statistics: contrast of 2 scan(s), blob column at 4 mm, "
            "score smoothed 2.5 mm" in info)
    assert "intensities normalised per scan" in info  # the CT score ignores the VAE's window
    assert main(["fit", str(paths[0]), "-o", str(out), "--normative",
                 "--normative-method", "error"]) == EXIT_USAGE


def test_a_stopped_normative_step_still_saves_the_fit(tmp_path, capsys, chest_ct, monkeypatch):
    """Ctrl-C during ``--normative`` (the statistics stop) keeps the fitted model: it is saved
    without statistics, and the command says so."""
    import napari_latentseg.pipeline as pipeline
    from napari_latentseg.models.checkpoint import load_model
    from napari_latentseg.runtime.progress import Cancelled

    def stopped(*args, **kwargs):
        yield {"stage": "density sample", "done": 0, "total": 1}
        raise Cancelled("anomaly features")

    monkeypatch.setattr(pipeline, "normative_job", stopped)
    scan = save_volume(tmp_path / "ref.nrrd", chest_ct(0), spacing=(3.0, 1.5, 1.5))
    out = tmp_path / "vae.pt"
    assert main(["fit", str(scan), "-o", str(out), "--config", "tiny", "--steps", "2",
                 "--decoder-steps", "0", "--normative", "-q"]) == 0
    assert "normative statistics stopped" in capsys.readouterr().err
    assert "normative" not in (load_model(out).anomaly or {})


def test_reconstruct_without_a_model_writes_the_score_alone(scan, model_file, tmp_path,
                                                            capsys):
    """`latentseg reconstruct IMAGE --anomaly-map SCORE` with no -m: the model-free default
    score (the denoiser on MR) in the scan's geometry; -o and --error need a model."""
    score, anom = tmp_path / "score.nii.gz", tmp_path / "a.nii.gz"
    assert main(["reconstruct", str(scan), "--anomaly-map", str(score), "--anomalies",
                 str(anom), "--device", "cpu", "-q"]) == 0
    out = capsys.readouterr().out
    assert "without a model" in out and "anomaly scoring: dae (self)" in out
    _same_geometry(read_volume(score), read_volume(scan))
    assert read_volume(anom).shape == read_volume(scan).shape
    for extra, message in ((["-o", str(tmp_path / "r.nii.gz")], "need a model"),
                           ([], "give a model")):
        args = ["reconstruct", str(scan), *extra, "-q"]
        if extra:
            args += ["--anomaly-map", str(tmp_path / "s2.nii.gz")]
        assert main(args) == EXIT_USAGE
        assert message in capsys.readouterr().err
    assert main(["reconstruct", str(scan), "-m", str(model_file), "--anomaly-map",
                 str(tmp_path / "s3.nii.gz"), "-q"]) == EXIT_USAGE
    assert "-o RECON is needed with a model" in capsys.readouterr().err


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_in_a_log_is_plain_lines():
    """Not a terminal (a log file, a pipe): no bars, redraws or cursor codes, only a line when
    a stage starts, at most one per interval, and one when it ends."""
    import io

    from napari_latentseg.cli._common import Progress

    log, clock = io.StringIO(), _Clock()
    p = Progress(stream=log, interval=10.0, clock=clock)
    assert p.plain
    for step in range(1, 101):  # 100 steps over 50 s
        clock.t = step * 0.5
        p({"stage": "fit", "step": step, "total": 100, "loss": 1.0 / step})
    p({"stage": "calibrate", "done": 0, "total": 1})
    p({"stage": "calibrate", "done": 1, "total": 1})
    for k in range(1, 4):  # a stage that never reports its end: its last state at close
        p({"stage": "read", "done": k})
    p({"stage": "fit", "step": 1, "total": 100})  # a stage that runs again (a second fit)
    p.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    fit = [ln for ln in lines if ln.startswith("fit:")]
    assert fit[0].startswith("fit: 1/100") and fit[-2].startswith("fit: 100/100 loss=0.0100")
    assert fit[-2].endswith("(50 s)") and 6 <= len(fit) <= 8  # start, every 10 s, end
    assert fit[-1] == "fit: 1/100 (0 s)"  # started again, its own clock
    assert [ln for ln in lines if ln.startswith("calibrate")] == ["calibrate... (0 s)",
                                                                  "calibrate: done (0 s)"]
    assert [ln for ln in lines if ln.startswith("read")] == ["read: 1 (0 s)", "read: 3 (0 s)"]


def test_progress_in_a_terminal_draws_bars():
    import io

    from napari_latentseg.cli._common import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    p = Progress(stream=term)
    assert not p.plain
    p({"stage": "fit", "step": 3, "total": 10})
    assert "fit" in p.bars and p.bars["fit"].n == 3
    p.close()
    assert "3/10" in term.getvalue()
    quiet = Progress(quiet=True, stream=Terminal())
    quiet({"stage": "fit", "step": 3, "total": 10})
    assert not quiet.bars and not quiet.stream.getvalue()


def test_a_job_logged_to_a_file_has_plain_progress(scan, model_file, tmp_path, capsys):
    assert main(["reconstruct", str(scan), "-m", str(model_file), "-o",
                 str(tmp_path / "r.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert err.strip() and "\r" not in err and "\x1b" not in err, err
    assert all(re.search(r"\(\d+ s\)$", line) for line in err.splitlines()), err

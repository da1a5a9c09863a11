"""benchmarks/bench_gpu.py: its dry run exercises every section on the CPU; without CUDA the real
run stops at once with one clear line (the GPU figures themselves come from `make bench-gpu`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_covers_every_section(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSEG_NUM_THREADS", "1")
    out = tmp_path / "bench_gpu.json"
    assert bench.main(["--dry-run", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["device"] == "cpu"
    assert res["errors"] == [] and res["skipped"] == []
    for case in ("brain1", "lung2"):
        assert set(res["fit"][case]) == set(bench.CONFIGS)
        for fit in res["fit"][case].values():
            assert fit["steps"] == 4 and fit["steps_per_s"] > 0
            assert fit["time_to_usable_s"] is not None
            assert fit["val_history"]
    assert res["fit"]["lung2"]["gpu-3d"]["config"] == "tiny-3d"
    for key in ("lung2", "synthetic", "lung2 gpu-2d", "lung2 gpu-3d", "synthetic gpu-3d"):
        assert res["reconstruct"][key]["voxels_per_s"] > 0
    seg = res["segment"]["lung2"]
    assert seg["uncached"]["cache_hit"] is False and seg["cached"]["cache_hit"] is True
    cmp_ = res["cpu_vs_gpu"]
    assert cmp_["case"] == "lung2"
    # Both runs are on the CPU here, so the "GPU" and CPU results must be identical.
    assert cmp_["reconstruction"]["recon_diff_norm_max"] == 0.0
    assert cmp_["segmentation"]["labels_equal_fraction"] == 1.0
    assert [t["met"] for t in res["targets"]] == [None] * len(bench.TARGETS)
    assert res["total_s"] < res["budget_s"]


def test_without_cuda_it_says_so_and_exits_2(bench, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench_gpu.json"
    assert bench.main(["--out", str(out)]) == bench.EXIT_NO_CUDA == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and "--dry-run" in err
    assert not out.exists()

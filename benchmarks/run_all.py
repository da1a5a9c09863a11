"""`make bench`: run every benchmark in turn (each writes JSON + markdown to results/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_engine.py", "bench_segment.py", "bench_loop.py", "bench_interactive.py",
           "bench_first_result.py", "bench_anomaly.py", "bench_ct_fullres.py", "bench_live.py",
           "bench_scaling.py", "bench_batch.py"]
# napari's canvas needs a display: bench_live runs under Xvfb when there is none.
NEEDS_DISPLAY = {"bench_live.py"}


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"== {name}", flush=True)
        cmd = [sys.executable, str(HERE / name), *sys.argv[1:]]
        if name in NEEDS_DISPLAY and not os.environ.get("DISPLAY"):
            if not shutil.which("xvfb-run"):
                print(f"{name}: skipped (no display and no xvfb-run)")
                continue
            cmd = ["xvfb-run", "-a", *cmd]
        if name == "bench_live.py":
            cmd += ["--out", str(HERE / "results" / "live.json")]
        if subprocess.run(cmd).returncode:
            failed.append(name)
    for md in sorted((HERE / "results").glob("*.md")):
        print(f"\n== {md.name}\n{md.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

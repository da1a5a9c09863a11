"""`make bench`: run every benchmark in turn (each writes JSON + markdown to results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_engine.py", "bench_segment.py", "bench_loop.py", "bench_scaling.py",
           "bench_batch.py"]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]]).returncode:
            failed.append(name)
    for md in sorted((HERE / "results").glob("*.md")):
        print(f"\n== {md.name}\n{md.read_text()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

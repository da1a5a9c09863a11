"""Quitting napari while a dock job runs: the job is stopped and Python exits cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = """
import time

from qtpy.QtCore import QEventLoop, QTimer
from qtpy.QtWidgets import QApplication

app = QApplication([])
import torch

from napari_latentseg._napari._widgets._tasks import TaskBar

bar = TaskBar()


def job(stop):
    while not stop.is_set():  # torch in use as the interpreter exits, as in a fit
        torch.ones(64, 64).sum()
        time.sleep(0.01)
        yield {"stage": "busy"}
    time.sleep(0.5)  # a last step after the stop, as a fit's
    open(MARKER, "w").write("stopped")


assert bar.start("Busy", job)
loop = QEventLoop()
QTimer.singleShot(500, loop.quit)
loop.exec()
assert bar.busy
# the script ends here with the job running, as when napari's window is closed mid-fit
"""


def test_exit_with_a_job_running_stops_it_and_waits(tmp_path):
    marker = tmp_path / "stopped"
    script = tmp_path / "exit_mid_job.py"
    script.write_text(f"MARKER = {str(marker)!r}\n" + textwrap.dedent(SCRIPT))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.read_text() == "stopped"  # the job saw the stop and ran its last step
    assert "deleted" not in proc.stderr, proc.stderr[-2000:]

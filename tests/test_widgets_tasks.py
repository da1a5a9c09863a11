"""The dock's task bars: a fit held while the user's jobs run, and quitting mid-job."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytestmark = pytest.mark.gui

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


def test_a_held_job_waits_between_its_steps_and_still_stops(qtbot):
    """A job started with ``hold`` (a fit on the CPU) makes no step while the hold is on,
    goes on when it is off, and Stop ends it while held."""
    from napari_latentseg._napari._widgets._tasks import TaskBar

    bar = TaskBar()
    qtbot.addWidget(bar)
    held = threading.Event()
    held.set()
    steps = []

    def job(stop):
        for i in range(10_000):
            if stop.is_set():
                return "stopped"
            steps.append(i)
            yield {"stage": "fit", "step": i + 1, "total": 10_000}
            time.sleep(0.001)
        return "done"

    assert bar.start("Fitting", job, hold=held.is_set)
    qtbot.waitUntil(lambda: "paused while your other job runs" in bar.status_text,
                    timeout=10_000)
    time.sleep(0.3)
    assert steps == [0]  # held after its first step
    held.clear()
    qtbot.waitUntil(lambda: len(steps) > 20, timeout=10_000)
    assert "step" in bar.status_text  # the progress line is back
    held.set()
    qtbot.waitUntil(lambda: "paused" in bar.status_text, timeout=10_000)
    n = len(steps)
    with qtbot.waitSignal(bar.task_finished, timeout=10_000) as finished:
        bar.stop()
    assert finished.args[1] == "stopped" and len(steps) == n  # stopped without a step more


def test_the_bar_says_how_long_is_left_from_the_stages_pace():
    """After the stage's first seconds the status line says the time left at its pace so far
    (a new stage starts over); the denoiser's loss, a number for no clinician, is not shown,
    the VAE fit's (which has its loss plot) is."""
    from napari_latentseg._napari._widgets._tasks import PACE_MIN_S, _Pace, _progress_text

    pace = _Pace()
    ev = {"stage": "anomaly: denoiser", "done": 10, "total": 900, "loss": 0.0042}
    assert pace.left(ev, 100.0) is None  # the stage's first report
    assert pace.left(dict(ev, done=12), 100.0 + PACE_MIN_S / 2) is None  # too soon
    left = pace.left(dict(ev, done=110), 120.0)  # 100 steps in 20 s, 790 to go
    assert left == pytest.approx(158.0)
    text = _progress_text("Anomaly score", dict(ev, done=110), left)
    assert "about 3 min left" in text and "loss" not in text
    assert pace.left({"stage": "anomaly: denoise", "done": 8, "total": 75}, 121.0) is None
    assert "about 40 s left" in _progress_text("Score", {"stage": "x", "done": 1, "total": 2},
                                               38.0)
    fit = {"stage": "fit", "step": 5, "total": 450, "loss": 0.25}
    assert "loss 0.2500" in _progress_text("Fitting", fit)

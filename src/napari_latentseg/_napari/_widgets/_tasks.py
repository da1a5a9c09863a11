"""The dock's task bars: each runs one core generator at a time in a napari thread worker.

The dock has two: the main bar for the jobs a user waits on (open, reconstruct, segment,
save) and a fit bar, so that a fit (minutes) runs in the background while the user segments
with the features at hand and sees results.

The core's long operations (``fit_iter``, ``reconstruct_iter``, ``cluster_iter``,
``segment_iter``) are generators that yield a progress dict per step and take a
``threading.Event`` to stop. :meth:`TaskBar.start` runs such a generator in a
:func:`napari.qt.threading.create_worker` thread; its ``yielded`` / ``returned`` / ``errored``
signals arrive on the GUI thread, where the callbacks given by the sections update the
progress bar and the layers. The worker never touches Qt or layers.

Stop sets the event: the core reacts at its next step (well under a second). A fit then
returns the best model so far; other jobs raise :class:`~napari_latentseg.runtime.progress.
Cancelled`, which the bar reports as "stopped" and after which nothing has been changed.

When Python exits (napari closed) with jobs still running, they are stopped and waited for
first: a fit left running while the interpreter tears its modules down otherwise aborts the
process ("Aborted (core dumped)"), and an autosave could be cut off mid-write.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ...runtime.progress import Cancelled
from ._layers import describe_error

__all__ = ["TaskBar"]

Job = Callable[[threading.Event], Generator[dict, None, Any]]

# The stop events of the jobs in flight, for the exit hook (events, not widgets: Qt may have
# deleted the bars by then).
_RUNNING: set[threading.Event] = set()
EXIT_WAIT_MS = 30_000


def stop_jobs_at_exit(wait_ms: int = EXIT_WAIT_MS) -> bool:
    """Stop every running job and wait for the worker threads to end.

    Registered with :mod:`atexit`, which runs before the interpreter's teardown, so that a
    job's last step still has torch and Qt to stop on.

    Returns
    -------
    bool
        False if some worker was still running after ``wait_ms``.
    """
    for event in list(_RUNNING):
        event.set()
    from qtpy.QtCore import QThreadPool

    return bool(QThreadPool.globalInstance().waitForDone(wait_ms))


atexit.register(stop_jobs_at_exit)


HELD_POLL_S = 0.02


def _paced(gen: Generator[dict, None, Any], hold: Callable[[], bool],
           stop_event: threading.Event) -> Generator[dict, None, Any]:
    """``gen``'s steps, each next one waiting while ``hold()`` is true (or until Stop).

    A background fit on the CPU takes the cores' threads. Held between its steps, it gives
    them to what the user waits on and goes on afterwards: the first round on lung2 while the
    fit runs, 5.9 s against 8.3 s (``bench_live.py --while-fitting``). A job shorter than one
    step (a live slice) still shares the CPU with the step in flight.
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as end:
            return end.value
        yield item
        # Stop first: once the dock is closed (which stops its jobs) ``hold`` may not answer.
        if not stop_event.is_set() and hold():
            yield {"held": True}
            while not stop_event.is_set() and hold():
                time.sleep(HELD_POLL_S)


def _progress_text(title: str, ev: dict, left: float | None = None) -> str:
    stage = str(ev.get("stage", ""))
    if ev.get("message"):
        return f"{title}: {ev['message']}"
    parts = [title]
    if stage == "fit":
        parts.append(f"step {ev.get('step')}/{ev.get('total')}"
                     + (" (decoder)" if ev.get("phase") == "decoder" else ""))
    elif stage:
        done, total = ev.get("done"), ev.get("total")
        parts.append(f"{stage} {done}/{total}" if done is not None and total else stage)
    if left is not None:
        parts.append(_time_left(left))
    if ev.get("loss") is not None and stage == "fit":  # the VAE's fit has its loss plot too
        parts.append(f"loss {float(ev['loss']):.4f}")
    return " \u00b7 ".join(parts)


def _time_left(seconds: float) -> str:
    """"about 40 s left" (tens of seconds under a minute), else whole minutes."""
    if seconds < 55:
        return f"about {max(10, int(round(seconds / 10.0)) * 10)} s left"
    return f"about {max(1, int(round(seconds / 60.0)))} min left"


#: Seconds of a stage before the bar says how long is left.
PACE_MIN_S = 5.0


class _Pace:
    """Time left in a job's stage, from its pace since the stage's first report: none for
    the first :data:`PACE_MIN_S` seconds (too few steps to judge), nor for a stage with no
    count."""

    def __init__(self) -> None:
        self.stage: object = None
        self.t0 = 0.0
        self.done0 = 0

    def left(self, ev: dict, now: float) -> float | None:
        total = ev.get("total")
        done = ev.get("step") if "step" in ev else ev.get("done")
        if not total or done is None:
            self.stage = None
            return None
        key = (ev.get("stage"), ev.get("phase"), total)
        if key != self.stage or done < self.done0:
            self.stage, self.t0, self.done0 = key, now, int(done)
            return None
        moved, elapsed = int(done) - self.done0, now - self.t0
        if moved <= 0 or elapsed < PACE_MIN_S:
            return None
        return elapsed / moved * max(0, int(total) - int(done))


class TaskBar(QWidget):
    """Progress bar, status line and Stop button for one job at a time.

    Parameters
    ----------
    parent : QWidget, optional
        The parent widget.
    idle_text : str
        The status line before the first job.

    Signals
    -------
    busy_changed(bool)
        Emitted when a job starts (True) and when it has finished (False).
    task_finished(str, str)
        ``(title, outcome)`` after a job ended; ``outcome`` is ``"done"``, ``"stopped"`` or
        ``"error"``. Tests wait on it.
    """

    busy_changed = Signal(bool)
    task_finished = Signal(str, str)

    def __init__(self, parent: QWidget | None = None, idle_text: str = "Ready.") -> None:
        super().__init__(parent)
        self._label = QLabel(idle_text)
        self._label.setWordWrap(True)
        self._bar = QProgressBar()
        self._bar.setRange(0, 1)
        self._bar.setValue(0)
        self._bar.setFormat("")  # idle: an empty bar, not "0%"
        self._stop_btn = QPushButton("Stop")
        self._stop_btn.setToolTip(
            "Stop at the next step. A fit keeps the best model so far; other jobs change "
            "nothing. The previous model and result layers are kept."
        )
        self._stop_btn.setEnabled(False)
        self._stop_btn.clicked.connect(self.stop)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self._bar, 1)
        row.addWidget(self._stop_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self._label)
        lay.addLayout(row)
        self.worker = None
        self._stop_event: threading.Event | None = None
        self._title = ""
        self._preemptible = False
        self._outcome = "done"
        self.stop_requested_at: float | None = None
        self._after: list[Callable[[], None]] = []
        self._callbacks: tuple[Callable | None, ...] = (None, None, None)
        self._pace = _Pace()

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self.worker is not None

    @property
    def stop_requested(self) -> bool:
        """True once Stop was pressed for the running job."""
        return self._stop_event is not None and self._stop_event.is_set()

    @property
    def status_text(self) -> str:
        """The status line (for tests and screenshots)."""
        return self._label.text()

    # ------------------------------------------------------------------ running
    def start(
        self,
        title: str,
        job: Job,
        *,
        on_yield: Callable[[dict], None] | None = None,
        on_return: Callable[[Any], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        stoppable: bool = True,
        preemptible: bool = False,
        hold: Callable[[], bool] | None = None,
    ) -> bool:
        """Run ``job(stop_event)`` (a generator) in a thread worker.

        Parameters
        ----------
        title : str
            What runs, for the status line and messages ("Fitting", "Reconstructing"...).
        job : callable
            Called in the worker thread with the stop event; returns the core generator. It
            must capture plain arrays and values only, never layers or widgets.
        on_yield, on_return : callable, optional
            Called on the GUI thread with each progress dict / the generator's return value.
        on_stopped : callable, optional
            Called on the GUI thread when the job was cancelled by Stop.
        stoppable : bool
            Enable the Stop button (False for short jobs that cannot stop, e.g. file reads).
        preemptible : bool
            A job nobody asked for (live mode's volume round): one the user starts while it
            runs stops it and starts once it has, rather than being refused.
        hold : callable, optional
            Called in the worker between the job's steps: while it returns True the job
            waits (a fit on the CPU while the user's other jobs run).

        Returns
        -------
        bool
            False (with a warning) if another job is still running.
        """
        from napari.qt.threading import create_worker

        if self.busy and self._preemptible:
            self.stop()
            self._after.append(lambda: self.start(
                title, job, on_yield=on_yield, on_return=on_return, on_stopped=on_stopped,
                stoppable=stoppable, preemptible=preemptible, hold=hold))
            return True
        if self.busy:
            show_warning(f"{self._title} is still running: wait for it to finish or press "
                         "Stop first.")
            return False
        stop_event = threading.Event()
        _RUNNING.add(stop_event)

        def run():
            try:
                steps = job(stop_event)
                return (yield from (steps if hold is None else _paced(steps, hold, stop_event)))
            finally:  # in the worker: the GUI thread's loop may no longer run at exit
                _RUNNING.discard(stop_event)

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        self.worker = worker
        self._stop_event = stop_event
        self._title = title
        self._preemptible = preemptible
        self._outcome = "done"
        self.stop_requested_at = None
        self._pace = _Pace()
        self._callbacks = (on_yield, on_return, on_stopped)
        # Bound methods: Qt drops these connections if the dock is deleted mid-job, and the
        # job is then told to stop.
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_return)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.destroyed.connect(stop_event.set)
        self._label.setText(f"{title}\u2026")
        self._bar.setFormat("%p%")
        self._bar.setRange(0, 0)  # busy until the first progress report
        self._stop_btn.setEnabled(stoppable)
        self.setVisible(True)  # the fit bar is hidden until the first fit
        self.busy_changed.emit(True)
        worker.start()
        return True

    def after(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the GUI thread once the running job has finished (now if idle).

        A ``returned`` callback uses it to start a follow-up job.
        """
        if self.busy:
            self._after.append(fn)
        else:
            fn()

    def stop(self) -> None:
        """Ask the running job to stop at its next step."""
        if self._stop_event is None or self._stop_event.is_set():
            return
        self._stop_event.set()
        self.stop_requested_at = time.perf_counter()
        self._stop_btn.setEnabled(False)
        self._label.setText(f"{self._title}: stopping at the next step\u2026")

    # ------------------------------------------------------------------ callbacks (GUI thread)
    def _call(self, fn: Callable | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # a failing callback must not leave the bar busy
            self._outcome = "error"
            show_error(describe_error(exc, self._title))

    def _on_yield(self, ev: Any) -> None:
        fn = self._callbacks[0]
        if not isinstance(ev, dict):
            return
        if ev.get("held"):  # the bar keeps its progress; the next step's report follows
            if not self.stop_requested:
                self._label.setText(f"{self._title}: paused while your other job runs\u2026")
            return
        total = ev.get("total")
        done = ev.get("step") if "step" in ev else ev.get("done")
        if ev.get("message") or not total or done is None:
            self._bar.setRange(0, 0)
        else:
            self._bar.setRange(0, int(total))
            self._bar.setValue(min(int(done), int(total)))
        left = self._pace.left(ev, time.perf_counter())
        if not self.stop_requested:
            self._label.setText(_progress_text(self._title, ev, left))
        self._call(fn, ev)

    def _on_return(self, value: Any) -> None:
        self._outcome = "stopped" if self.stop_requested else "done"
        self._call(self._callbacks[1], value)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._outcome = "stopped"
            self._call(self._callbacks[2])
            return
        self._outcome = "error"
        show_error(describe_error(exc, self._title))

    def _on_aborted(self) -> None:
        # napari can cancel a worker too (worker.quit, e.g. when quitting): same as Stop.
        self._outcome = "stopped"
        self._call(self._callbacks[2])

    def _on_finished(self) -> None:
        title, outcome = self._title, self._outcome
        self.worker = None
        self._stop_event = None
        self._preemptible = False
        self._callbacks = (None, None, None)
        self._stop_btn.setEnabled(False)
        self._bar.setRange(0, 1)
        self._bar.setValue(1 if outcome == "done" else 0)
        word = {"done": "done", "stopped": "stopped", "error": "failed (see the message)"}
        self._label.setText(f"{title}: {word[outcome]}.")
        self.busy_changed.emit(False)
        self.task_finished.emit(title, outcome)
        pending, self._after = self._after, []
        for fn in pending:
            self._call(fn)

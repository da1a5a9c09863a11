"""What every command shares: errors, exit codes, progress bars, clean Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

from ..runtime.errors import UserError

__all__ = ["CLIError", "EXIT_USAGE", "EXIT_FAILURE", "EXIT_INTERRUPTED", "Progress", "is_terminal",
           "drive_interruptible", "run_core", "add_common", "add_anomaly_options",
           "note_with_self", "class_id"]

EXIT_USAGE = 2  # the user's input or request is wrong
EXIT_FAILURE = 1  # the job failed (out of memory, a failed scan of a batch, a bug)
EXIT_INTERRUPTED = 130


class CLIError(UserError):
    """An error explained to the user in one line."""


def add_anomaly_options(sp: argparse.ArgumentParser, each: str = "the") -> None:
    """Anomaly scoring options, the same for ``reconstruct`` and ``batch --task
    reconstruct`` (``each``: "the" or "each", as the help text reads)."""
    sp.add_argument("--anomaly-method", default="default",
                    help="scoring method (default: the benchmark's best for the scan: dae, a "
                         "denoising autoencoder fitted on the scan, on MR (~2-4 min on a "
                         "CPU), contrast on CT, the model's normative statistics' method with "
                         "them; others: features, knn, intensity, contrast, error, ssim, "
                         "median, dae)")
    sp.add_argument("--keep-symmetric", action="store_true",
                    help="keep the dae score's findings that are mirrored on both sides of "
                         "the head (by default they are lowered: the orbits and the skull "
                         "base are not lesions; bilateral disease fades with them)")
    sp.add_argument("--keep-surface", action="store_true",
                    help="keep the dae score's findings near the surface on MR (by default "
                         "they fade in from 10 to 20 mm inside it: the eyes, nose and scalp "
                         "are not lesions; keep them for superficial findings, e.g. breast)")
    sp.add_argument("--with-self", action="store_true",
                    help=f"with the model's normative statistics: also fit the method on "
                         f"{each} scan itself and rank voxels by the mean of the two scores "
                         f"(flagging as many as the higher score, corrected so the "
                         f"false-positive rate stays at --fpr; dae: ~2-4 min more on a CPU)")
    sp.add_argument("--fpr", type=float, default=1e-3,
                    help="false-positive rate of the candidate threshold on normal tissue "
                         "(default 0.001)")


def note_with_self(model, scored: str) -> None:
    """Say on stderr when ``--with-self`` cannot change anything (no normative statistics)."""
    if model is None or not (model.anomaly or {}).get("normative"):
        what = "there is no model" if model is None else "the model holds no normative statistics"
        print(f"note: --with-self changes nothing: {what}, so {scored} scored against itself",
              file=sys.stderr)


def add_common(sp: argparse.ArgumentParser) -> None:
    """Options every compute command has."""
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    sp.add_argument("--device", default="auto",
                    help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")


def is_terminal(stream) -> bool:
    """Whether ``stream`` is a terminal (bars redraw there; a log file or pipe gets lines)."""
    isatty = getattr(stream, "isatty", None)
    return callable(isatty) and bool(isatty())


class Progress:
    """Progress of the core's stages on ``stream`` (stderr), fed by its progress dicts.

    On a terminal: tqdm bars keyed by stage. On a log file or a pipe (a batch job, a cluster
    scheduler's log), bars would write a redraw per step with carriage returns and cursor
    codes, so each stage gets plain lines instead: one when it starts, then at most one
    every ``interval`` seconds, and one when it ends, with its time.
    """

    def __init__(self, quiet: bool = False, stream=None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.plain = not is_terminal(self.stream)
        self.interval = float(interval)
        self.clock = clock
        self.bars: dict[str, object] = {}
        self.lines: dict[str, dict] = {}  # plain mode: what each stage last reported

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        stage = ev.get("stage", "work")
        total = ev.get("total")
        done = ev.get("step", ev.get("done", 0))
        post = {}
        for key in ("loss", "val", "best_val"):
            if key in ev and ev[key] is not None:
                post[key] = f"{ev[key]:.4f}"
        if "message" in ev:
            post["msg"] = ev["message"]
        if self.plain:
            self._plain(stage, done, total, post)
            return
        from tqdm.auto import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = tqdm(total=total, desc=stage, unit="step" if stage == "fit" else "it",
                       file=self.stream, leave=True, dynamic_ncols=True)
            self.bars[stage] = bar
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        if post:
            bar.set_postfix(post, refresh=False)
        bar.refresh()

    def _plain(self, stage: str, done, total, post: dict) -> None:
        now = self.clock()
        line = self.lines.get(stage)
        if line is None or (line["ended"] and total and done < total):  # (re)started
            line = self.lines[stage] = {"t0": now, "done": done,
                                        "total": total, "post": post,
                                        "ended": bool(total) and done >= total}
            self._write(stage, line, now)
            return
        line.update(done=done, total=total or line["total"], post=post or line["post"])
        if line["ended"]:
            return
        if line["total"] and done >= line["total"]:
            line["ended"] = True
            self._write(stage, line, now)
        elif now - line["last"] >= self.interval:
            self._write(stage, line, now)

    def _write(self, stage: str, line: dict, now: float) -> None:
        done, total = line["done"], line["total"]
        if total == 1:  # a single step: started or done
            text = f"{stage}: done" if done >= 1 else f"{stage}..."
        else:
            text = f"{stage}: {done}/{total}" if total else f"{stage}: {done}"
        text += "".join(f" {k}={v}" for k, v in line["post"].items())
        print(f"{text} ({now - line['t0']:.0f} s)", file=self.stream, flush=True)
        line["last"], line["shown"] = now, done

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        now = self.clock()
        for stage, line in self.lines.items():  # where it moved on since its last line
            if not line["ended"] and line["done"] != line["shown"]:
                self._write(stage, line, now)
        self.lines.clear()


def drive_interruptible(gen, progress: Callable, stop: threading.Event):
    """Drive a core generator; the first Ctrl-C sets ``stop`` (a clean stop), the second aborts."""
    interrupted = False
    while True:
        try:
            ev = next(gen)
        except StopIteration as done:
            return done.value
        try:
            progress(ev)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            stop.set()
            print("\nstopping at the next step (Ctrl-C again to abort)...", file=sys.stderr)


def run_core(make_gen: Callable[[threading.Event], object], quiet: bool):
    """Run the core generator ``make_gen(stop_event)`` with progress bars and clean Ctrl-C."""
    stop = threading.Event()
    progress = Progress(quiet)
    try:
        return drive_interruptible(make_gen(stop), progress, stop)
    finally:
        progress.close()


def load_scan(path: str):
    """Read a scan for a command (the pipeline's reader; a missing path is a usage error)."""
    from ..pipeline import load_scan as _load

    try:
        return _load(path)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None


def class_id(text: str) -> int:
    """A label id >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a label id >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a label id >= 1, got {value}")
    return value

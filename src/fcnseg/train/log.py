"""What a run reports: a progress bar (loss, lr, img/s, ETA) on a terminal, or in a log (nohup, SLURM, CI) a
progress line at each ``log_interval``; ``metrics.csv``, TensorBoard when installed, and one line per
validation."""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fcnseg.atomic import atomic_open
from fcnseg.errors import WriteError
from fcnseg.metrics import SCORE_KEYS
from fcnseg.progress import bar as progress_bar
from fcnseg.progress import format_seconds, is_quiet, lines_instead
from fcnseg.train.folder import left_after_a_failed_write
from fcnseg.train.run import Run

log = logging.getLogger(__name__)


class CsvLog:
    """Append-only CSV log (iteration, loss, lr, img/s, and validation metrics when present)."""

    FIELDS = ["iteration", "epoch", "loss", "lr", "images_per_s", *SCORE_KEYS]

    def __init__(self, path: Path, enabled: bool, resume_from: int | None = None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept: list[list[str]] = []
        if resume_from is not None and path.exists():  # drop rows logged after the checkpoint resumed from
            with path.open(newline="") as handle:
                kept = [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= resume_from]
        with atomic_open(path, "w", newline="") as handle:  # a full disk leaves the rows logged so far
            csv.writer(handle).writerows([self.FIELDS, *kept])

    def write(self, **row: Any) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a", newline="") as handle:
                csv.writer(handle).writerow([row.get(name, "") for name in self.FIELDS])
        except OSError as error:  # a full disk: one line, and what the run leaves
            raise WriteError(f"cannot write {self.path}: {error.strerror or error}; "
                             f"{left_after_a_failed_write(self.path.parent)}") from None


class BoardLog:
    """TensorBoard's event file (when tensorboard is installed). A full disk stops the run in one line, as it does
    for metrics.csv: TensorBoard writes from a thread of its own and hands its error to the next call."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.folder, self.writer = folder, None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: CSV logs always exist
            log.warning("tensorboard is not installed, logging to metrics.csv only (pip install tensorboard for "
                        "TensorBoard logs)")
            return
        _quiet_tensorboard_thread()
        with self._errors():
            self.writer = SummaryWriter(str(folder))

    def scalars(self, iteration: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            with self._errors():
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            with self._errors():
                self.writer.flush()  # close() alone drops an error of the writing thread
                self.writer.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            self.writer = None  # its thread has stopped: nothing more can be written, or closed
            raise WriteError(f"cannot write {self.folder}: {error.strerror or error}; "
                             f"{left_after_a_failed_write(self.folder.parent)}") from None


def _quiet_tensorboard_thread() -> None:
    """Keep the traceback of TensorBoard's writing thread off the screen when it fails to write (a full disk):
    the thread hands the error to the next TensorBoard call, which :class:`BoardLog` reports in one line. Every
    other thread's exception goes to the hook that was there."""
    previous = threading.excepthook
    if getattr(previous, "fcnseg_quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (type(args.thread).__module__.startswith("tensorboard.") and isinstance(args.exc_value, OSError)):
            previous(args)

    hook.fcnseg_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class RunLog:
    """The reports of one run; only the main process writes."""

    def __init__(self, run: Run) -> None:
        main = run.runtime.is_main
        self.run = run
        if main:  # recorded before they exist: a run killed at any moment leaves only fcnseg train's files
            run.outputs.record([run.out / "metrics.csv"], growing=True)
            run.outputs.record_folder(run.out / "tensorboard")
        self.csv = CsvLog(run.out / "metrics.csv", main, run.iteration if run.config.resume else None)
        self.board = BoardLog(run.out / "tensorboard", main)
        # On a terminal the bar; elsewhere no bar is drawn, and the main process logs a line with each CSV row.
        self.bar = progress_bar(total=run.config.iterations, initial=run.iteration, desc="train", unit="it",
                                enabled=main, lines=False)
        self.lines = lines_instead(enabled=main)
        self.window_start, self.window_images = time.perf_counter(), 0
        self.started, self.first_iteration = self.window_start, run.iteration

    def images(self, count: int) -> None:
        """Count images seen (over all processes) for the throughput figure."""
        self.window_images += count

    def step(self, epoch: int, loss: float) -> None:
        """After an optimizer step: progress bar, and every ``log_interval`` steps the CSV/TensorBoard row (and
        the progress line where no bar is drawn)."""
        run, lr = self.run, self.run.optimizer.param_groups[0]["lr"]
        now = time.perf_counter()
        throughput = self.window_images / max(now - self.window_start, 1e-9)
        self.bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {throughput:.1f} img/s", refresh=False)
        self.bar.update(1)
        if run.iteration % run.config.log_interval == 0 or run.iteration == run.config.iterations:
            self.csv.write(iteration=run.iteration, epoch=epoch, loss=f"{loss:.6f}", lr=f"{lr:.6g}",
                           images_per_s=f"{throughput:.2f}")
            self.board.scalars(run.iteration, {"train/loss": loss, "train/lr": lr})
            if self.lines:
                log.info(self.progress_line(epoch, loss, lr, throughput, now))
            self.window_start, self.window_images = now, 0

    def progress_line(self, epoch: int, loss: float, lr: float, throughput: float, now: float) -> str:
        """``it 20/1000, epoch 1: loss 1.2345, lr 9.82e-03, 45.2 img/s, elapsed 01:02, ETA 50:40`` (the ETA
        at the pace of this invocation so far, validations included)."""
        run, elapsed = self.run, now - self.started
        done, left = run.iteration - self.first_iteration, run.config.iterations - run.iteration
        eta = f", ETA {format_seconds(elapsed / done * left)}" if done > 0 else ""
        return (f"it {run.iteration}/{run.config.iterations}, epoch {epoch}: loss {loss:.4f}, lr {lr:.2e}, "
                f"{throughput:.1f} img/s, elapsed {format_seconds(elapsed)}{eta}")

    def validation(self, epoch: int, scores: dict[str, Any]) -> None:
        """The validation scores: CSV row, TensorBoard, and one line on stderr (unless quiet). The CSV holds
        the first head's scores (which choose best.pth); further heads go to TensorBoard and the line."""
        run = self.run
        self.csv.write(iteration=run.iteration, epoch=epoch, **{k: f"{scores[k]:.6f}" for k in SCORE_KEYS})
        heads = scores.get("extra_heads", {})
        self.board.scalars(run.iteration, {
            **{f"val/{key}": scores[key] for key in SCORE_KEYS},
            **{f"val_{task}/{key}": head[key] for task, head in heads.items() for key in SCORE_KEYS}})
        if run.runtime.is_main and not is_quiet():
            more = "".join(f"; {task} mean IU {100 * s['mean_iu']:.1f}, pixel acc. {100 * s['pixel_acc']:.1f}"
                           for task, s in heads.items())
            self.bar.write(f"it {run.iteration}/{run.config.iterations}: val mean IU {100 * scores['mean_iu']:.1f}, "
                           f"pixel acc. {100 * scores['pixel_acc']:.1f}{more}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        self.board.close()

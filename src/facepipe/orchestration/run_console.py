"""What `facepipe run` shows while it runs, and where each step's output goes (runs/<id>/logs/).

kfp.local runs the tasks one at a time in the runner's thread and writes everything to the runner's
own stdout/stderr: its progress lines, each task's subprocess output (the KFP executor's input
JSON, the step's prints and warnings, a traceback) and, with the DockerRunner, the container's log
stream and image pulls. So the runner, not the step, is where a task's whole output can be caught,
for both runners alike: `RunConsole.capture` points file descriptors 1 and 2 at a pipe for the run
(writes from C libraries and child processes included) and a reader thread sorts the lines:

- between kfp.local's "Executing task 'T'" and "Task 'T' finished with status S" lines, into
  `logs/<step>.log`; anything else (kfp.local's own lines, MLflow, warnings of this process) into
  `logs/pipeline.log`. Colour codes are removed in the files. Nothing is dropped: a line that
  cannot be placed goes to pipeline.log. (A step-side log written by component_runtime would miss
  the executor's lines before and after the step function and the DockerRunner's.)
- the terminal gets one line per step: reused, running (with the step's last `Progress` line:
  step/total, rate, epoch, samples/s), done (time and the headline metrics its Step record names),
  failed (time and the last lines of its log). On a TTY the running line is redrawn in place;
  otherwise plain lines only, no colour codes, a running step's progress after 30 s, 60 s, 120 s, ...
- `verbose`: every line is echoed as it came instead (kfp.local's output as it would print it).

The split relies on kfp.local's two marker lines (kfp is pinned in requirements.lock; the pipeline
tests check each step's log on a real run, so a changed format fails there, not silently).
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import json
import os
import re
import select
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping

from facepipe.progress import parse_line

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STARTED = re.compile(r" - INFO - Executing task '(?P<task>[^']+)'\s*$")
_FINISHED = re.compile(r" - (?:INFO|ERROR) - Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)\s*$")
_OUTPUTS = re.compile(r" - INFO - Task '(?P<task>[^']+)' (?:outputs:|has no outputs)")  # right after SUCCESS
RUN_LOG = "pipeline"  # logs/pipeline.log: what ran outside any task
TAIL_LINES = 20
PLAIN_PROGRESS_EVERY_S = 30.0


def strip_colour(text: str) -> str:
    return ANSI.sub("", text)


def step_of_task(task: str) -> str:
    """The step name (`train_recognition`) of a KFP task name (`train-recognition`)."""
    from facepipe.steps import STEPS

    return next((s for s in STEPS if s.replace("_", "-") == task), task)


def headline(step: str, metrics: Mapping[str, float]) -> str:
    """The step's headline metrics (its Step record's `headline`) as `label value, ...`."""
    from facepipe.steps import STEPS

    record = STEPS.get(step)
    parts, shown = [], set()
    for key, label in record.headline if record else ():
        keys = sorted(k for k in metrics if fnmatch.fnmatchcase(k, key) and k not in shown) if "*" in key \
            else [key] if key in metrics else []
        for k in keys[:2]:
            shown.add(k)
            parts.append(f"{label if '*' not in key else k} {_number(metrics[k])}")
    return ", ".join(parts)


def _number(value) -> str:
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


class _Task:
    def __init__(self, name: str, log: Path):
        self.name, self.step = name, step_of_task(name)
        self.log = log
        self.file = open(log, "a", encoding="utf-8", errors="replace")
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES + 5)  # + kfp's closing lines
        self.started = time.monotonic()
        self.progress = ""
        self.next_plain = PLAIN_PROGRESS_EVERY_S  # seconds into the step; doubles, so a long step adds few lines

    def write(self, line: str) -> None:
        self.file.write(line + "\n")
        self.file.flush()  # a step that hangs: its log is readable meanwhile
        self.tail.append(line.removeprefix("    "))  # kfp.local indents the streamed lines


class RunConsole:
    """Sorts a run's output into per-step logs and keeps the terminal to one line per step."""

    def __init__(self, logs: Path, order: Iterable[str], upstream: Mapping[str, Iterable[str]],
                 kfp_root: Path, verbose: bool = False, stream=None):
        self.logs = Path(logs)
        self.order = list(order)
        self.upstream = {t: list(u) for t, u in upstream.items()}
        self.kfp_root = Path(kfp_root)
        self.verbose = verbose
        self.out = stream or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        self.colour = self.tty and not os.environ.get("NO_COLOR")
        self.width = max(len(step_of_task(t)) for t in self.order) if self.order else 12
        self.shown: dict[str, str] = {}       # task -> the state its line said last
        self.current: _Task | None = None
        self.trailing: _Task | None = None    # the task just finished: its output listing follows
        self.run_log = None
        self._live = False                    # a running line is on the terminal, not yet ended
        self._lock = threading.Lock()

    # -- what the terminal shows ------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A line of the runner's own (header, notes), through whatever stream the terminal is now."""
        with self._lock:
            self._end_live()
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): the logs still get everything
            pass

    def _end_live(self) -> None:
        if self._live:
            self._write("\n")
            self._live = False

    def _state(self, state: str) -> str:
        colours = {"done": "32", "failed": "31", "reused": "36", "running": "33"}
        word = f"{state:8s}"
        return f"\x1b[{colours[state]}m{word}\x1b[0m" if self.colour and state in colours else word

    def _line(self, task: str, state: str, detail: str = "") -> str:
        return f"  {step_of_task(task):{self.width}s}  {self._state(state)} {detail}".rstrip()

    def _show(self, task: str, state: str, detail: str = "", live: bool = False) -> None:
        if self.verbose:
            return
        text = self._line(task, state, detail)
        if self.tty:
            columns = 0
            with contextlib.suppress(OSError, ValueError, AttributeError):
                columns = os.get_terminal_size(self.out.fileno()).columns if live else 0
            if live and columns and len(strip_colour(text)) >= columns:
                text = text[:columns - 1 + len(text) - len(strip_colour(text))]
            self._write("\r\x1b[K" + text + ("" if live else "\n"))
            self._live = live
        else:
            self._write(text + "\n")
        self.shown[task] = state

    def _reused(self, tasks: Iterable[str]) -> None:
        for t in [t for t in self.order if t in set(tasks) and t not in self.shown]:
            self._end_live()
            self._show(t, "reused", "(cached output of an earlier run)")

    def _upstream_of(self, task: str) -> set[str]:
        found, frontier = set(), [task]
        while frontier:
            for u in self.upstream.get(frontier.pop(), []):
                if u not in found:
                    found.add(u)
                    frontier.append(u)
        return found

    # -- the lines of the run ---------------------------------------------------------------------

    def line(self, raw: str) -> None:
        """One line of the run's output, as written (colours included)."""
        with self._lock:
            if self.verbose:
                self._write(raw + "\n")
            text = strip_colour(raw)
            started = _STARTED.search(text)
            if started and self.current is None:
                self._start(started["task"], text)
                return
            if self.current is not None:
                self.current.write(text)
                finished = _FINISHED.search(text)
                if finished and finished["task"] == self.current.name:
                    self._finish(self.current, finished["status"])
                    self.trailing, self.current = self.current, None
                else:
                    self._progress(self.current, text)
                return
            if self.trailing is not None:
                listing = _OUTPUTS.search(text)
                if (listing and listing["task"] == self.trailing.name) or (text[:1].isspace() and text.strip()):
                    self.trailing.write(text)
                    return
                self.trailing.file.close()
                self.trailing = None
            self._run_log().write(text + "\n")

    def tick(self) -> None:
        """Redraw the running line (its elapsed time) on a TTY; called about once a second."""
        with self._lock:
            if self.current is not None and self.tty and not self.verbose:
                self._show_running(self.current)

    def _run_log(self):
        if self.run_log is None:
            self.run_log = open(self.logs / f"{RUN_LOG}.log", "a", encoding="utf-8", errors="replace")
        return self.run_log

    def _start(self, task: str, text: str) -> None:
        if self.trailing is not None:
            self.trailing.file.close()
            self.trailing = None
        self._reused(self._upstream_of(task))  # its inputs came from the cache if they did not run here
        self.current = _Task(task, self.logs / f"{step_of_task(task)}.log")
        self.current.write(text)
        self._end_live()
        self._show_running(self.current, at_start=True)

    def _show_running(self, task: _Task, at_start: bool = False) -> None:
        elapsed = "" if at_start else _seconds(time.monotonic() - task.started)
        self._show(task.name, "running", f"{elapsed:>8s}  {task.progress}".rstrip(), live=self.tty)

    def _progress(self, task: _Task, text: str) -> None:
        found = parse_line(text)
        if found is None:
            return
        done = f"{found['n']}/{found['total']}" if found["total"] else str(found["n"])
        parts = [f"{found['desc']} {done} {found['unit']}", f"{found['rate']:g} {found['unit']}/s"]
        parts += [f"ETA {found['eta']} s"] if found["eta"] else []
        parts += [f"{k} {v}" for k, v in found["postfix"].items() if k != "lr"]
        task.progress = ", ".join(parts)
        now = time.monotonic()
        if self.tty:
            self._show_running(task)
        elif now - task.started >= task.next_plain:
            task.next_plain *= 2
            self._show_running(task)

    def _finish(self, task: _Task, status: str) -> None:
        task.file.flush()
        elapsed = _seconds(time.monotonic() - task.started)
        if status == "SUCCESS":
            self._show(task.name, "done", f"{elapsed:>8s}  {headline(task.step, self._metrics(task.name))}")
            return
        self._show(task.name, "failed", f"{elapsed:>8s}  last lines of {task.log}:")
        if not self.verbose:
            body = [line for line in task.tail if not _FINISHED.search(line)]
            while body and not body[-1].strip():
                body.pop()
            self._write("".join(f"    | {line}\n" for line in body[-TAIL_LINES:]))

    def _metrics(self, task: str) -> dict:
        """The task's KFP Metrics artifact (JSON, written by component_runtime.run_step)."""
        found = sorted(self.kfp_root.glob(f"*/{task}/metrics"), key=lambda p: p.stat().st_mtime)
        try:
            return json.loads(found[-1].read_text()) if found else {}
        except (OSError, ValueError):
            return {}

    def finish(self, states: Mapping[str, str]) -> None:
        """After the run: a line for each task not shown yet, from the run record's states."""
        with self._lock:
            if self.trailing is not None:
                self.trailing.file.close()
                self.trailing = None
            if self.current is not None:  # interrupted mid-task
                self.current.file.close()
                self._end_live()
                self._show(self.current.name, "failed" if states.get(self.current.name) == "failed"
                           else "stopped", f"see {self.current.log}")
                self.current = None
            self._end_live()
            self._reused([t for t, s in states.items() if s == "reused"])
            for task in self.order:
                if task not in self.shown and task in states:
                    self._show(task, states[task].replace("executed", "done"))
            if self.run_log is not None:
                self.run_log.close()
                self.run_log = None

    # -- catching the output ----------------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self):
        """Fds 1 and 2 into a pipe read by a thread that feeds `line`; the terminal keeps a dup of fd 1."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        terminal = None
        if self.out is sys.stdout:
            # The terminal as it was: a line-buffered writer on a copy of the original fd 1.
            terminal = self.out = open(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        old_streams = sys.stdout, sys.stderr
        # Line-buffered writers on the new fds: kfp.local's prints and its log lines stay in order.
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        reader = threading.Thread(target=self._read, args=(read_end,), name="facepipe-run-console", daemon=True)
        reader.start()
        try:
            yield self
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            sys.stdout, sys.stderr = old_streams
            os.dup2(saved[1], 1)
            os.dup2(saved[2], 2)
            for fd in saved.values():
                os.close(fd)
            # EOF once no process holds the write end; a straggler holding it must not hang the run.
            reader.join(timeout=10)
            if not reader.is_alive():
                os.close(read_end)
            if terminal is not None:  # the fds are back: the terminal is plain stdout again
                with self._lock:
                    self.out = sys.stdout
                terminal.close()

    def _read(self, fd: int) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                self._safely(self.tick)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                self._safely(self.line, raw.decode("utf-8", "replace").rstrip("\r"))
        if pending:
            self._safely(self.line, pending.decode("utf-8", "replace"))

    def _safely(self, fn, *args) -> None:
        """A bug here must not stop the reading: a full pipe would block the run."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported, and reading goes on
            with contextlib.suppress(Exception):
                self._run_log().write(f"[facepipe] run console: {type(exc).__name__}: {exc}\n")

"""What the user sees on the terminal during a run, and where everything else goes.

A default run prints, in this order and nothing else: one line per phase (preparing the model,
starting the replicas and where they landed, running), the live progress bar, the result
tables, and where the results, the report and the log are. Everything else goes to
`OUTPUT_DIR/logs/run.log`: every log record (this project's, Ray's, Hydra's), Python warnings,
and whatever Ray, vLLM or any library writes straight to this process's stdout/stderr (the file
descriptors are pointed at the log for the session; the console keeps its own copies of the
terminal's). Replica actors write their own output to `OUTPUT_DIR/logs/replica-<i>.log`; when a
run fails on a replica, the console shows the tail of that log. Warnings and errors of this
project's loggers (`orchestrator.*`) still reach the console, one line each. `verbose=true` turns
all of this off: everything is shown as it comes (and still written to run.log).

The runner's calls:

    console.prelude(cfg)                             # first: config warnings as `warning: ...`
    with console.session(cfg):                       # around the run, after config validation
        with console.step("preparing the model") as s:   # `preparing the model ... ready in 0.4 s: X`
            model = ...; s.done(name)
        st = console.begin(f"starting {n} replicas")     # a phase that spans a try block
        ...; console.end(st, console.placement(infos))
        console.line(f"running {groups} groups ...")
        bar = console.progress_bar(cfg, meter); console.show(bar, meter)   # meter: progress.WorkMeter
        console.tables(text); console.finish(output_dir, report_html)   # the last lines

Outside a session the same calls print plainly (stdout), so library use and tests need no setup.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator

import ray  # noqa: F401  (importing it installs the "ray" logger's own handler, which a session moves)
from tqdm import tqdm

from ..coordinator.messages import Progress
from .progress import WorkMeter

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ConsoleHandler(logging.Handler):
    """Warnings and errors of this project's loggers, one line each, without breaking the bar or
    an open step line."""

    def __init__(self, session: "Session", verbose: bool):
        super().__init__(logging.INFO if verbose else logging.WARNING)
        self.session = session
        self.verbose = verbose
        if verbose:
            self.setFormatter(logging.Formatter(LOG_FORMAT))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name.startswith("orchestrator")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) if self.verbose else f"{record.levelname.lower()}: {record.getMessage()}"
            self.session.interject(text)
        except Exception:  # as every logging handler: a console that cannot be written must not break the run
            self.handleError(record)


class Step:
    """One phase line: `text ... result (12.3 s)`; on a terminal, `update()` shows live status."""

    def __init__(self, session: "Session | None", text: str):
        self.session, self.text = session, text
        self.started = time.monotonic()
        self.result: str | None = None
        self.broken = False  # something else was printed after the text
        self.ended = False
        self._status = ""

    def update(self, status: str) -> None:
        if self.session is not None and self.session.tty and not self.broken:
            self._status = status
            self.session.write(f"\r{self.text} ... {status}\033[K", err=False)

    def done(self, result: str = "") -> None:
        """The result shown after `ready in N s:` when the phase ends."""
        self.result = result

    def end(self, result: str | None = None) -> None:
        end(self, result)

    def _end(self, failed: bool) -> str:
        seconds = time.monotonic() - self.started
        if failed:
            return f"failed after {seconds:.1f} s"
        return f"ready in {seconds:.1f} s" + (f": {self.result}" if self.result else "")


class Session:
    def __init__(self, output_dir: str | Path, verbose: bool = False, progress: bool = True):
        self.root = Path(output_dir)
        self.verbose = verbose
        self.show_bar = progress
        self.log_path = self.root / "logs" / "run.log"
        self.out: io.TextIOBase = sys.stdout
        self.err: io.TextIOBase = sys.stderr
        self.tty = False
        self.bar = None
        self.step: Step | None = None
        self._saved_fds: list[int] = []
        self._handlers: list[logging.Handler] = []
        self._ray_state: tuple | None = None

    # -- set-up and tear-down ---------------------------------------------------------------------
    def open(self) -> "Session":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        _close_previous_file_handler()
        for h in list(root.handlers):  # Hydra's console and file handlers (not, e.g., pytest's)
            if type(h) in (logging.StreamHandler, logging.FileHandler, _PlainHandler):
                root.removeHandler(h)
        file_handler = logging.FileHandler(self.log_path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        file_handler._leap_console = True  # noqa: SLF001 (marks the handler of a session)
        root.addHandler(file_handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        self._route_ray_logger()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if not self.verbose:
            self._redirect_fds()
        self.tty = bool(getattr(self.err, "isatty", lambda: False)())
        console = _ConsoleHandler(self, self.verbose)
        root.addHandler(console)
        self._handlers = [console]
        log.info("console: output_dir %s, verbose=%s", self.root.resolve(), self.verbose)
        return self

    def close(self) -> None:
        self.close_progress()
        root = logging.getLogger()
        for h in self._handlers:
            root.removeHandler(h)
        self._handlers = []
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._restore_fds()
        # the run.log handler stays: what is logged after the run (Ray's exit) is not shown

    def _route_ray_logger(self) -> None:
        """Ray gives its "ray" logger its own stderr handler; send its records to run.log."""
        ray_logger = logging.getLogger("ray")
        for h in list(ray_logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                ray_logger.removeHandler(h)
        ray_logger.propagate = True

    def _redirect_fds(self) -> None:
        """Point fds 1 and 2 at run.log; keep copies of the terminal's for the console."""
        try:
            out_fd, err_fd = os.dup(1), os.dup(2)
        except OSError:
            return
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        self._saved_fds = [out_fd, err_fd]
        self.out = os.fdopen(os.dup(out_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        self.err = os.fdopen(os.dup(err_fd), "w", buffering=1, encoding="utf-8", errors="replace")

    def _restore_fds(self) -> None:
        if not self._saved_fds:
            return
        for stream in (self.out, self.err):
            with contextlib.suppress(Exception):
                stream.flush()
                stream.close()
        out_fd, err_fd = self._saved_fds
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        self._saved_fds = []
        self.out, self.err = sys.stdout, sys.stderr

    # -- writing ----------------------------------------------------------------------------------
    def write(self, text: str, err: bool = False) -> None:
        stream = self.err if err else self.out
        stream.write(text)
        stream.flush()

    def interject(self, text: str, err: bool = True) -> None:
        """A line printed while a step line or the bar may be on screen."""
        if self.bar is not None and not getattr(self.bar, "disable", True):  # an open bar
            tqdm.write(text, file=self.err)
            return
        if self.step is not None and not self.step.broken:
            self.write("\n")
            self.step.broken = True
        self.write(text + "\n", err=err)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_session: Session | None = None


class _PlainHandler(logging.Handler):
    """Before a session (config checks): this project's warnings as `warning: ...` on stderr."""

    def __init__(self, verbose: bool):
        super().__init__(logging.INFO if verbose else logging.WARNING)
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.name.startswith("orchestrator")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # as every logging handler: a failed write must not break the run
            self.handleError(record)


def prelude(cfg) -> None:
    """Call first thing in a run: Hydra's log lines (`[time][logger][LEVEL] - ...` on the
    terminal) give way to one `warning: ...` line per warning, until `session()` takes over."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler or isinstance(h, _PlainHandler):
            root.removeHandler(h)
    root.addHandler(_PlainHandler(bool(getattr(cfg, "verbose", False))))
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def _close_previous_file_handler() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_leap_console", False):
            root.removeHandler(h)
            h.close()


@contextlib.contextmanager
def session(cfg) -> Iterator[Session]:
    """The console for one run: logging to OUTPUT_DIR/logs/run.log, the terminal for the
    phase lines, bar and tables. Restores stdout/stderr on the way out, errors included, so the
    error report of `python -m orchestrator` reaches the terminal."""
    global _session
    s = Session(cfg.output_dir, verbose=bool(getattr(cfg, "verbose", False)),
                progress=bool(getattr(cfg, "progress", True))).open()
    previous, _session = _session, s
    try:
        yield s
    except BaseException as exc:
        end(s.step, failed=True)
        _failed_replica_tail(s, exc)
        s.close()
        _session = previous
        raise  # `python -m orchestrator` reports it, naming run.log
    s.close()
    _session = previous


# --------------------------------------------------------------------------- the runner's calls


def line(text: str) -> None:
    """One line on the console (and in run.log)."""
    log.info("%s", text)
    if _session is None:
        print(text, flush=True)
    else:
        _session.interject(text, err=False)


def begin(text: str) -> Step:
    """Start a phase line: `text ...`; `end()` (or `Step.end`) completes it with its result."""
    st = Step(_session, text)
    log.info("%s ...", text)
    if _session is None:
        print(f"{text} ...", flush=True)
    else:
        _session.step = st
        _session.write(f"{text} ... ")
    return st


def end(st: Step | None, result: str | None = None, failed: bool = False) -> None:
    if st is None or st.ended:
        return
    st.ended = True
    if result is not None:
        st.result = result
    text = st._end(failed)
    log.info("%s: %s", st.text, text)
    s = st.session
    if s is None:
        print(f"{st.text}: {text}", flush=True)
        return
    if s.step is st:
        s.step = None
    prefix = f"\r{st.text} ... " if s.tty else (f"{st.text} ... " if st.broken else "")
    s.write(f"{prefix}{text}{chr(27) + '[K' if s.tty else ''}\n")


@contextlib.contextmanager
def step(text: str) -> Iterator[Step]:
    """A phase: prints `text ...`, then `ready in 1.2 s: result` on the same line (`failed
    after ...` when the block raises)."""
    st = begin(text)
    try:
        yield st
    except BaseException:
        end(st, failed=True)
        raise
    end(st)


def terminal():
    """The stream that reaches the terminal's stderr now (the console's copy during a session,
    when the process's own stderr goes to run.log)."""
    return _session.err if _session is not None else sys.stderr


def placement(infos: list[dict]) -> str:
    """Where the replicas landed: `0-1 on node 943f717ff138 (cpu); 2-3 on node 5c1e... (NVIDIA H100)`."""
    by_node: dict[str, list[dict]] = {}
    for info in infos:
        by_node.setdefault(str(info.get("node", "?"))[:12], []).append(info)
    parts = []
    for node, members in by_node.items():
        devices = sorted({", ".join(i.get("gpu_names") or []) or str(i.get("device") or "?") for i in members})
        parts.append(f"{_ranges([int(i.get('index', -1)) for i in members])} on node {node} "
                     f"({'; '.join(devices)})")
    return "; ".join(parts)


def _ranges(ids: list[int]) -> str:
    ids = sorted(ids)
    out, start = [], None
    for i, v in enumerate(ids):
        if start is None:
            start = v
        if i + 1 == len(ids) or ids[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def progress_bar(cfg, meter: WorkMeter):
    """The live bar of the run's work (`progress.WorkMeter`: sampled tokens against the budget);
    None when `progress=false`. Starts the meter's clock."""
    meter.start()
    if not getattr(cfg, "progress", True):
        return None
    bar = tqdm(total=max(meter.total, 1), dynamic_ncols=True, bar_format=BAR_FORMAT, postfix=[meter.text()],
               file=_session.err if _session is not None else sys.stderr)
    if _session is not None:
        _session.bar = bar
    return bar


# `work  42%|████▏     | groups 3/12 | 01:05 elapsed, ~01:30 left (plan) | r2:3 | paths 24 | 310 tok/s`
# (the text is postfix[0], a list's item: tqdm would put ", " before a string postfix)
BAR_FORMAT = "work {percentage:3.0f}%|{bar}| {postfix[0]}"


def show(bar, meter: WorkMeter) -> None:
    """The work done (the bar), groups done of all, time elapsed and left, then `status_text`."""
    text = bar_text(meter)
    if bar is None:
        log.debug("progress: %.1f%% %s", 100 * meter.fraction, text)
        return
    bar.total = max(meter.total, 1)
    bar.n = min(meter.done, bar.total)
    bar.postfix = [text]
    bar.refresh()


def bar_text(meter: WorkMeter) -> str:
    return f"{meter.text()} | {status_text(meter.progress)}"


def status_text(progress: Progress) -> str:
    """`r1:3 r2:5 | paths 96 | 1234 tok/s | cache 93% | failovers 2`: groups per current round,
    active paths, sampled tokens per second, prefix-cache hit rate, paths moved off dead replicas."""
    per_round: dict[int, int] = {}
    for r in progress.rounds.values():
        per_round[r] = per_round.get(r, 0) + 1
    parts = [" ".join(f"r{r}:{n}" for r, n in sorted(per_round.items())) or "r-",
             f"paths {progress.active_paths}", f"{progress.tokens_per_s or 0:.0f} tok/s"]
    if progress.cache_hit_rate is not None:
        parts.append(f"cache {progress.cache_hit_rate:.0%}")
    if progress.failovers:
        parts.append(f"failovers {progress.failovers}")
    return " | ".join(parts)


def close_progress() -> None:
    if _session is not None:
        _session.close_progress()


def tables(text: str) -> None:
    """The result tables, after the bar."""
    close_progress()
    log.info("results:\n%s", text)
    if _session is None:
        print(text, flush=True)
    else:
        _session.write("\n" + text + "\n\n")


def finish(output_dir: str | Path, report: str | Path | None = None) -> None:
    """The final lines: where the results, the report and the log are."""
    root = Path(output_dir).resolve()
    lines = [f"results  {root}"]
    if report is not None:
        lines.append(f"report   {Path(report).resolve()}")
    if _session is not None and not _session.verbose:
        lines.append(f"log      {_session.log_path.resolve()}")
    for ln in lines:
        line(ln)


def _failed_replica_tail(s: Session, exc: BaseException) -> None:
    """An engine that failed to start or died: show the end of its own log."""
    index = getattr(exc, "replica", None)
    if index is None:
        match = re.search(r"\breplica (\d+)\b", str(exc))
        index = int(match.group(1)) if match else None
    if index is not None:
        with contextlib.suppress(Exception):
            replica_failed(int(index))


def replica_failed(index: int, lines: int = 20) -> None:
    """Show the end of a failed replica's own log (OUTPUT_DIR/logs/replica-<i>.log)."""
    if _session is None:
        return
    path = _session.root / "logs" / f"replica-{index}.log"
    if not path.is_file():
        return
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    _session.interject(f"replica {index} failed; the end of {path}:\n" + "\n".join(f"  | {t}" for t in tail))

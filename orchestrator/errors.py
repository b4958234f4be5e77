"""What a failed run tells its user: one paragraph on stderr and an exit status.

    exit 2  a user error: something in the command, the config, the data or the cluster request
            must change (a bad key or value, a dataset file or row, a model path, a Ray address
            that does not answer, a layout the cluster cannot place, an engine that cannot load
            the model).
    exit 1  a runtime failure: the same command may work later (a deadline passed while waiting,
            groups failed, the coordinator kept dying).

No traceback is printed unless `HYDRA_FULL_ERROR=1` is set or the config says `debug=true`.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import traceback

from .core.errors import RUNTIME_FAILURE, USER_ERROR, LeapError, UserError

__all__ = ["RUNTIME_FAILURE", "USER_ERROR", "LeapError", "UserError", "ClusterError", "ConfigChanged",
           "ConfigError", "DeadlineError", "EngineError", "RunFailed"]


class ClusterError(UserError):
    """The Ray cluster cannot be reached, or cannot give what the config asks for."""


class EngineError(UserError):
    """A replica's engine could not start (usually the model or engine settings); the message
    carries the engine's own cause."""


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the key. Exits with status 2."""


class DeadlineError(LeapError):
    """A bounded wait ran out (placement, engine start-up, connecting)."""


class ConfigChanged(UserError):
    """A rerun into an output_dir whose results were made with another config."""


class RunFailed(LeapError):
    """The run went wrong after it started: groups failed, or the coordinator kept dying."""


def exit_code(exc: BaseException) -> int:
    """2 for user errors (including config and dataset errors), 1 for everything else."""
    if isinstance(exc, LeapError):
        return exc.exit_code
    names = {cls.__name__ for cls in type(exc).__mro__}
    # config.ConfigError and data.DatasetError subclass UserError; HubUnavailableError asks the
    # user for dataset.path; these names keep the mapping right for code that raises them bare
    if names & {"ConfigError", "DatasetError", "HubUnavailableError", "ConfigCompositionException"}:
        return USER_ERROR
    return RUNTIME_FAILURE


def want_traceback(debug: bool = False) -> bool:
    return debug or os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def paragraph(text: str, width: int = 100) -> str:
    """One paragraph: lines joined, blank lines and runs of spaces collapsed, wrapped."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    flat = re.sub(r"\s+", " ", " ".join(lines)).strip()
    return textwrap.fill(flat, width=width, break_long_words=False, break_on_hyphens=False)


def describe(exc: BaseException) -> str:
    """The message for an exception: ours as written; others with their type, since a bare
    `KeyError: 'x'` means little without it."""
    if isinstance(exc, LeapError) or exit_code(exc) == USER_ERROR:
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def report(exc: BaseException, debug: bool = False, stream=None, log_path=None) -> int:
    """Print the failure as the user sees it; returns the exit status. `log_path`, when the run
    wrote a log, ends the paragraph."""
    stream = stream or sys.stderr
    code = exit_code(exc)
    if want_traceback(debug):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    kind = "error" if code == USER_ERROR else "run failed"
    text = describe(exc).rstrip()
    if log_path:
        text += ("" if text.endswith((".", ")")) else ".") + f" The full log is {log_path}"
    print(paragraph(f"{kind}: {text}"), file=stream, flush=True)
    return code


def remote_cause(exc: BaseException, max_lines: int = 4) -> str:
    """The original error inside a Ray task or actor failure, in a few lines: Ray's own message
    wraps a whole remote traceback around it."""
    cause = getattr(exc, "cause", None)
    if cause is not None and cause is not exc and not _is_ray_wrapper(cause):
        # our own errors (and an engine's start failure) say what they are; others need their type
        plain = isinstance(cause, LeapError) or type(cause).__name__ == "EngineStartError"
        text = str(cause) if plain else f"{type(cause).__name__}: {cause}"
    else:
        text = str(exc)
    return first_lines(_strip_traceback(text), max_lines)


def first_lines(text: str, n: int = 4) -> str:
    lines = [ln.rstrip() for ln in str(text).splitlines() if ln.strip()]
    out = "\n".join(lines[:n])
    return out + (" ..." if len(lines) > n else "")


def _is_ray_wrapper(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("ray.")


_FRAME = re.compile(r"^\s*(Traceback \(most recent call last\):|File \".*\", line \d+|\^+$|~+$)")


def _strip_traceback(text: str) -> str:
    """Drop traceback frames (and the code lines under them) from a remote error message."""
    out, skip_code = [], False
    for line in str(text).splitlines():
        if _FRAME.match(line):
            skip_code = line.lstrip().startswith("File ")
            continue
        if skip_code and line.startswith("    "):
            skip_code = False
            continue
        skip_code = False
        out.append(line)
    # Ray prefixes the interesting line with "ray::Actor.method() (pid=..., ip=...)" lines
    kept = [ln for ln in out if not re.match(r"^\s*ray::\S+ \(pid=", ln)]
    errors = [ln for ln in kept if re.match(r"^\s*[\w.]+(Error|Exception|Exit|Interrupt)\b.*", ln)]
    if errors:  # the last exception line carries the cause; keep what follows it too
        i = max(i for i, ln in enumerate(kept) if ln in errors)
        return "\n".join(kept[i:])
    return "\n".join(kept)

"""`python -m orchestrator [+experiment=NAME] [key=value ...]` — the thin Hydra entry.

Composes the config (schema defaults + conf/ YAML + overrides), then hands it to
`orchestrator.driver.runner.run`; this module runs in the driver process.
A failure ends as one paragraph on stderr and exit status 2 (user error: config, data, model
path, cluster address or size, an engine that cannot load) or 1 (runtime failure); the
traceback only with `HYDRA_FULL_ERROR=1` or `debug=true` (see `errors.py`).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .config import compose_message, register, to_config
from .driver.runner import run
from .errors import USER_ERROR, paragraph, report, want_traceback

register()

_composed = False  # Hydra reached our function: a later exit 1 from Hydra is not a compose error
_held: io.StringIO | None = None  # Hydra's stderr while it composes (see `entry`)
_stderr = sys.stderr


def _release_stderr() -> str:
    """Give stderr back; returns what Hydra wrote meanwhile."""
    global _held
    text = _held.getvalue() if _held is not None else ""
    _held = None
    sys.stderr = _stderr
    return text


def _point_from_overrides() -> str:
    """Under multirun, name the sweep point after this job's leap.* overrides."""
    try:
        hc = HydraConfig.get()
    except ValueError:
        return ""
    if hc.mode is None or hc.mode.name != "MULTIRUN":
        return ""
    items = sorted(o.split("=", 1) for o in hc.overrides.task if o.lstrip("+~").startswith("leap."))
    return ",".join(f"{k.lstrip('+~').removeprefix('leap.')}={v}" for k, v in items)


def _debug_flag(dcfg) -> bool:
    try:
        return bool(dcfg.get("debug", False))
    except Exception:  # a config too broken to read: the error report goes on without a traceback
        return False


def _run_log(dcfg) -> str | None:
    """The run's own log (console.py writes OUTPUT_DIR/logs/run.log), when there is one."""
    try:
        path = Path(str(dcfg.get("output_dir"))) / "logs" / "run.log"
        return str(path.resolve()) if path.is_file() else None
    except Exception:  # no readable output_dir (the error being reported may be that): no log to name
        return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> None:
    global _composed
    _composed = True
    early = _release_stderr()
    if early:
        sys.stderr.write(early)
    debug = _debug_flag(dcfg)
    try:
        cfg = to_config(dcfg)
        debug = cfg.debug
        if not cfg.point and not cfg.sweep:
            cfg.point = _point_from_overrides()
        run(cfg)
    except KeyboardInterrupt:
        print("interrupted: finished groups and the last barrier's checkpoints are saved; rerun the same "
              "command to continue", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as exc:  # the one place every failure becomes a paragraph and an exit status
        sys.exit(report(exc, debug=debug, log_path=_run_log(dcfg)))


def entry() -> None:
    """Run `main`. While Hydra composes, its stderr is held: an override it cannot apply
    (unknown key, wrong type, missing group or experiment) makes it print a message of several
    lines (sometimes a traceback) and exit 1; that becomes one paragraph and exit 2."""
    global _held
    if not want_traceback():
        _held = io.StringIO()
        sys.stderr = _held
    try:
        main()
    except SystemExit as exc:
        early = _release_stderr()
        if exc.code == 1 and not _composed:
            print(paragraph(f"error: {compose_message(early)}"), file=sys.stderr, flush=True)
            sys.exit(USER_ERROR)
        if early:
            sys.stderr.write(early)
        raise
    finally:
        early = _release_stderr()
        if early:
            sys.stderr.write(early)


if __name__ == "__main__":
    entry()

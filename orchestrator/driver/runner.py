"""One run, from config to report: what `python -m orchestrator` calls (`run`).

The driver only submits and waits. It loads the problems and checks the config before Ray
starts (a bad config costs nothing), takes the output directory (a lock, and a fingerprint that
refuses a rerun with other settings), skips groups already finished there (resume), runs the
rest in phases (`loop.RunLoop`: compute-matched points after the points they match; when an
engine profile applies, after planning itself: `plan_check`), and then
consolidates what finished into the result files and the report, even when the run failed (a
run that planned itself and finished plans again with the path lengths it sampled).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from omegaconf import OmegaConf

from . import console, fingerprint, plan_check
from .checkpoint import Recovery
from .context_fit import check_context
from .lock import RunLock
from .phases import load_inputs, matched_items, split_phases
from .loop import RunLoop
from .progress import WorkMeter
from .replicas import model_path
from .results import ResultStore
from ..config import Config
from ..core import metrics
from ..core.types import Problem
from ..errors import ConfigChanged, RunFailed
from .. import report

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    """Run (or resume) every sweep point x problem group; returns summary.json's content."""
    console.prelude(cfg)
    points, prompts, problems = load_inputs(cfg)
    with console.session(cfg):  # from here the terminal shows phases, progress and results only
        return _run(cfg, points, prompts, problems)


def _run(cfg: Config, points, prompts, problems) -> dict:
    store = ResultStore(cfg.output_dir)
    with RunLock(store.root):  # a second run on this directory is refused, naming this one
        fp = _admit(store, fingerprint.make(cfg, points, prompts, problems))
        store.write_json("config.json", OmegaConf.to_container(OmegaConf.structured(cfg)))
        return _run_locked(cfg, points, prompts, problems, store, fp)


def _admit(store: ResultStore, fp: dict) -> dict:
    """Refuse, before Ray starts, a rerun whose results would mix with another config's; move
    unreadable parts aside (their groups run again); record the directory's fingerprint."""
    recorded_file = store.root / fingerprint.FILE
    recorded = {}
    if recorded_file.is_file():
        try:
            recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigChanged(f"{recorded_file} is unreadable ({exc}): the results in {store.root} cannot be "
                                f"matched to a config. Start fresh with another output_dir=...") from None
    diffs = fingerprint.compare(recorded, fp) if recorded else []
    unstamped = 0
    for meta, part in store.check_parts():
        stamp = (meta or {}).get("fingerprint")
        if stamp is None:
            unstamped += 1
        elif not diffs:
            diffs = fingerprint.compare(stamp, fp)
            if diffs:
                diffs.insert(0, f"(in {part.relative_to(store.root)}, group {meta['point']}|{meta['problem_id']})")
    if diffs:
        raise ConfigChanged(
            f"{store.root} holds results made with another config, and a rerun there continues them: "
            + "; ".join(diffs) + f". Rerun with the settings it was made with, or start fresh: output_dir=<a new "
            f"directory> (or delete {store.root}).")
    if unstamped:
        raise ConfigChanged(
            f"{store.root} holds {unstamped} result part(s) written without a config fingerprint (an earlier "
            f"version): they cannot be checked against this config. Start fresh with another output_dir=..., or "
            f"finish that run with the version that began it.")
    fp = fingerprint.merge(recorded, fp)
    store.write_json(fingerprint.FILE, fp)
    return fp


def _run_locked(cfg: Config, points, prompts, problems, store: ResultStore, fp: dict) -> dict:
    todo = [(pt, pb) for pt in points for pb in problems if not store.is_done(pt, pb.id)]
    skipped = len(points) * len(problems) - len(todo)
    if skipped and not todo:
        console.line(f"every group is already complete in {store.root}: reporting only (use another "
                     f"output_dir, or delete this one, to run again)")
    elif skipped:
        console.line(f"resume: {skipped} of {skipped + len(todo)} groups already complete in {store.root}")
    first, later = split_phases(points, todo)
    phases = [lambda: first, lambda: _matched_items(store, points, later)]
    # groups a killed run left a checkpoint for continue from their last barrier
    recovery = Recovery(cfg.output_dir, points, fp)
    recovery.forget_done(store.is_done)
    started = time.monotonic()
    failure: BaseException | None = None
    facts: dict = {"generation_s": 0.0}
    if todo:  # before Ray: the model, every problem checked to fit the context, the plan (seconds)
        model, facts = _prepare(cfg, points, prompts, todo, problems)
        facts.update(plan_check.check(cfg, points, prompts, problems, todo, model))
        expected_s = (facts.get("predicted") or {}).get("generation_s")  # the bar's time left
        meter = WorkMeter(points, [(pt, pb.id) for pt, pb in todo], expected_s)
    try:
        if todo:
            facts.update(_run_groups(cfg, points, prompts, phases, meter, store, recovery, fp, model))
    except KeyboardInterrupt:
        raise  # out within seconds: the finished parts and checkpoints are on disk for a rerun
    # whatever stopped the run, what finished is still a result: it is consolidated below, and
    # then the failure is raised again
    except Exception as exc:
        failure = exc
    facts.update(recovery.facts())
    paths_t, _ = store.read_parts()
    rows = paths_t.to_pylist()
    summary = metrics.summarize(rows, points=points)
    missing = [(pt, pb.id) for pt in points for pb in problems if not store.is_done(pt, pb.id)]
    if missing:
        summary["_incomplete"] = _incomplete(missing, failure, facts.get("failed_groups", []))
    t_write = time.monotonic()
    store.consolidate(summary)
    times = {"wall_s": round(time.monotonic() - started, 3), "writing_s": round(time.monotonic() - t_write, 3)}
    if todo and failure is None and not missing and "predicted" in facts:  # the clock has stopped
        facts.update(plan_check.recheck(cfg, points, prompts, problems, todo, model, rows, facts.get("generation_s"),
                                        times["wall_s"]))
    if todo and failure is None and not missing:  # how long its paths were, for the next plan of these points
        plan_check.remember(cfg, points, prompts, todo, rows)
    store.write_json("run_info.json", {**times, "groups_run": len(todo), "groups_skipped": skipped,
                                       "complete": not missing, **facts})
    if paths_t.num_rows:  # a run with nothing finished has nothing to report
        _report(cfg, store, paths_t, summary)
    if failure is not None:
        raise failure
    if missing:
        raise RunFailed(f"{len(missing)} group(s) have no result (see summary.json's _incomplete; finished "
                        f"groups and checkpoints are saved; rerun the same command to retry them): "
                        + "; ".join(f"{e['sweep_point']}|{e['problem_id']}: {e['reason']}"
                                    for e in summary["_incomplete"]["groups"][:5]))
    return summary


def _incomplete(missing: list[tuple[str, str]], failure: BaseException | None, failed: list[str]) -> dict:
    """summary.json's mark of a partial run: every group without a result, and why."""
    groups = []
    for point, problem_id in missing:
        reason = next((err[len(point) + len(problem_id) + 3:] for err in failed
                       if err.startswith(f"{point}|{problem_id}: ")), None)
        if reason is None:
            reason = f"the run stopped: {type(failure).__name__}: {failure}" if failure is not None else "not run"
        groups.append({"sweep_point": point, "problem_id": problem_id, "reason": reason[:500]})
    return {"groups_missing": len(missing), "groups": groups}


def _matched_items(store: ResultStore, points, later: list[tuple[str, Problem]]) -> list:
    """The compute-matched groups, their budgets from the matched points' results on disk."""
    if not later:
        return []
    paths_t, _ = store.read_parts()
    rows = paths_t.select(["sweep_point", "problem_id", "sampled_tokens", "injected_tokens", "probe_tokens",
                           "probe_prompt_tokens"]).to_pylist()
    return matched_items(rows, points, later)


def _prepare(cfg: Config, points, prompts, todo: list, problems: list[Problem]) -> tuple[str, dict]:
    """The model made ready (built, converted or found), and every problem still to run checked
    with its tokenizer to fit in engine.max_model_len: a refusal costs seconds, not an engine start."""
    t0 = time.monotonic()
    with console.step(f"preparing the model {cfg.model.path}" if cfg.engine.kind != "fake"
                      else "preparing the fake engine") as step:
        model = model_path(cfg)
        step.done(model)
    facts = {"model_prepare_s": round(time.monotonic() - t0, 3)}
    t0 = time.monotonic()
    check_context(cfg, points, prompts, todo, problems, model)
    facts["context_check_s"] = round(time.monotonic() - t0, 3)
    return model, facts


def _run_groups(cfg: Config, points, prompts, phases, meter: WorkMeter, store: ResultStore,
                recovery: Recovery, fp: dict, model: str) -> dict:
    """Run the phases' groups on fresh replicas (`model`: from `_prepare`; `meter`: the bar's
    count of their work); returns the run's timing and fault record (`loop.py`). Ctrl-C (or
    SIGTERM) stops the run within seconds, checkpoints kept; a second one exits at once."""
    with _Interrupts():
        return RunLoop(cfg, points, prompts, store, recovery, fp, model).run(phases, meter)


class _Interrupts:
    """Ctrl-C and SIGTERM (`ray job stop`) during a run: the first raises KeyboardInterrupt in
    the main thread, so the run stops admitting work and tears down within seconds with its
    checkpoints kept; the second exits at once. Installed explicitly, since a process started
    in the background by a shell inherits SIGINT ignored. Only the main thread can install."""

    def __init__(self):
        self.count = 0
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
        return False

    def _on_signal(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt
        try:
            console.terminal().write("\ninterrupted again: exiting now (the checkpoints are kept)\n")
            console.terminal().flush()
        finally:
            os._exit(130)


def _report(cfg: Config, store: ResultStore, paths_t, summary: dict) -> None:
    """The report files, then the console's last lines: the tables and where everything is."""
    try:
        written = report.write_report(store.root, plots=cfg.plots)
    # the results are saved and the report is only a view of them (plots, odd model text):
    # whatever stops it is a warning, with the command that rebuilds it
    except Exception as exc:
        log.warning("the report could not be written (%s); rebuild it with `python -m orchestrator.report %s`",
                    exc, store.root)
        console.tables(report.console_text(report.load_results(store.root)))
        console.finish(store.root)
        return
    console.tables(written["text"])
    console.finish(store.root, written["html"])

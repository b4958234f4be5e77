"""The driver: validate, start Ray, place replicas and the coordinator, stream groups, report.

The driver only submits and waits. It loads the problems and checks the config before Ray
starts (a bad config costs nothing), skips groups already finished in `output_dir` (resume),
writes each finished group as soon as it arrives, and rebuilds the result files at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from omegaconf import OmegaConf

from . import console, fingerprint
from .checkpoint import Recovery
# the GPU check kit (../shared/gpu/engine_probe.py) imports these two from here
from .cluster import engine_options  # noqa: F401
from .cluster import model_path as _model_path  # noqa: F401
from ..config import Config, oversubscription, prompt_file, sampling_spec, validate
from ..coordinator.messages import Progress
from .context_fit import check_context
from ..core import metrics
from ..core.prompts import load_prompts
from ..core.types import Problem
from .data import DatasetError, load_problems
from ..errors import ConfigChanged, RunFailed
from .grader import Grader
from .lock import RunLock
from .replacement import Replacements
from .results import ResultStore

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    """Run (or resume) every sweep point x problem group; returns summary.json's content."""
    console.prelude(cfg)
    points = validate(cfg)
    prompts = load_prompts(prompt_file(cfg.leap.prompts))
    problems = load_problems(cfg.dataset.name, path=cfg.dataset.path, limit=cfg.dataset.limit,
                             seed=cfg.leap.seed, hub_id=cfg.dataset.hub_id, split=cfg.dataset.split)
    if not problems:
        raise DatasetError(f"dataset {cfg.dataset.name} ({cfg.dataset.path or 'hub'}) has no problems")
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
    # compute-matched points wait for the point they match: their budgets come from its usage
    waits = {pt for pt, p in points.items() if p.match_point is not None and not p.token_budget}
    first = [(pt, pb, {}) for pt, pb in todo if pt not in waits]
    later = [(pt, pb) for pt, pb in todo if pt in waits]
    phases = [lambda: first, lambda: _matched_items(store, points, later)]
    # groups a killed run left a checkpoint for continue from their last barrier
    recovery = Recovery(cfg.output_dir, points, fp)
    recovery.forget_done(store.is_done)
    started = time.monotonic()
    failure: BaseException | None = None
    facts: dict = {"generation_s": 0.0}
    if todo:  # before Ray: the model, and every problem checked to fit the context (seconds)
        model, facts = _prepare(cfg, points, prompts, todo, problems)
    try:
        if todo:
            facts.update(_run_groups(cfg, points, prompts, phases, len(todo), store, recovery, fp, model))
    except KeyboardInterrupt:
        raise  # out within seconds: the finished parts and checkpoints are on disk for a rerun
    except Exception as exc:  # what finished is still a result: consolidate it, then fail
        failure = exc
    facts.update(recovery.facts())
    paths_t, _ = store.read_parts()
    summary = metrics.summarize(paths_t.to_pylist(), points=points)
    missing = [(pt, pb.id) for pt in points for pb in problems if not store.is_done(pt, pb.id)]
    if missing:
        summary["_incomplete"] = _incomplete(missing, failure, facts.get("failed_groups", []))
    t_write = time.monotonic()
    store.consolidate(summary)
    store.write_json("run_info.json", {"wall_s": round(time.monotonic() - started, 3),
                                       "writing_s": round(time.monotonic() - t_write, 3),
                                       "groups_run": len(todo), "groups_skipped": skipped,
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
    """Per problem, the budget is the mean tokens per path (sampled + injected) of the matched point."""
    if not later:
        return []
    paths_t, _ = store.read_parts()
    used: dict[tuple[str, str], list[int]] = {}
    for row in paths_t.select(["sweep_point", "problem_id", "sampled_tokens", "injected_tokens"]).to_pylist():
        used.setdefault((row["sweep_point"], row["problem_id"]), []).append(
            row["sampled_tokens"] + row["injected_tokens"])
    items = []
    for point, problem in later:
        tokens = used.get((points[point].match_point, problem.id))
        if not tokens:
            log.error("compute-matched %s|%s: %s has no results for it; skipped", point, problem.id,
                      points[point].match_point)
            continue
        items.append((point, problem, {"token_budget": max(1, round(sum(tokens) / len(tokens)))}))
    return items


def _prepare(cfg: Config, points, prompts, todo: list, problems: list[Problem]) -> tuple[str, dict]:
    """The model made ready (built, converted or found), and every problem still to run checked
    with its tokenizer to fit in engine.max_model_len: a refusal costs seconds, not an engine start."""
    from . import cluster

    t0 = time.monotonic()
    with console.step(f"preparing the model {cfg.model.path}" if cfg.engine.kind != "fake"
                      else "preparing the fake engine") as step:
        model = cluster.model_path(cfg)
        step.done(model)
    facts = {"model_prepare_s": round(time.monotonic() - t0, 3)}
    t0 = time.monotonic()
    check_context(cfg, points, prompts, todo, problems, model)
    facts["context_check_s"] = round(time.monotonic() - t0, 3)
    return model, facts


def _run_groups(cfg: Config, points, prompts, phases, total: int, store: ResultStore, recovery: Recovery,
                fp: dict, model: str) -> dict:
    with _Interrupts():
        return _groups(cfg, points, prompts, phases, total, store, recovery, fp, model)


def _groups(cfg: Config, points, prompts, phases, total: int, store: ResultStore, recovery: Recovery,
            fp: dict, model: str) -> dict:
    """Run the phases' groups on fresh replicas (`model`: from `_prepare`); returns the run's
    timing and fault record. A coordinator that dies is replaced, and given every group it had,
    from their checkpoints; a replica that dies is replaced when the cluster has room. Ctrl-C
    (or SIGTERM) stops the run within seconds, checkpoints kept; a second one exits at once."""
    import ray

    from . import cluster
    from .console import progress_bar, show

    facts: dict = {}
    starting = console.begin(f"starting Ray and {cfg.replicas.count} {cfg.engine.kind} replica(s)")
    facts["ray"] = cluster.init_ray(cfg)
    facts["run_id"] = cluster.run_prefix()  # actors are named <run_id>-leap-replica-<i>, ...
    facts["namespace"] = cfg.ray.namespace
    facts["oversubscribe"] = oversubscription(cfg)  # the value applied (null resolves by engine)
    grader = Grader()
    replicas, pg = cluster.create_replicas(cfg, model)
    replaced = Replacements(cfg, replicas)
    # the coordinator loads its tokenizer and prompts while the engines load
    t_coord = time.monotonic()
    sampling = sampling_spec(cfg)
    coordinator = cluster.start_coordinator(cfg, replicas, model, points, prompts, sampling)
    coord_ready = coordinator.ready.remote()
    failed: list[str] = []
    bar = None
    capacity: list[int] = []
    moved_before = 0  # paths moved by coordinators that have since died
    progress: Progress | None = None
    interrupted = False

    def replace_coordinator(exc: BaseException):
        nonlocal coordinator, moved_before, progress
        moved_before += progress.failovers if progress is not None else 0
        progress = None
        coordinator = cluster.restart_coordinator(cfg, replicas, model, points, prompts, sampling, capacity,
                                                  recovery, exc, old=coordinator, dead=replaced.dead())

    def ask(method: str, *args):
        """A call to the coordinator that survives it: unreachable for a moment, it is retried
        with backoff (replicas.unavailable_retry_s); dead, or unreachable for longer, it is
        replaced (and the call's answer is None)."""
        backoff, waited = 0.25, 0.0
        while True:
            try:
                return cluster.answer(getattr(coordinator, method).remote(*args), f"the coordinator ({method})")
            except Exception as exc:
                if cluster.unavailable(exc) and waited < cfg.replicas.unavailable_retry_s:
                    log.warning("the coordinator is unreachable (%s); retrying in %.2f s", type(exc).__name__, backoff)
                    time.sleep(backoff)
                    waited, backoff = waited + backoff, min(backoff * 2, 8.0)
                    continue
                if not (cluster.coordinator_died(exc) or cluster.unavailable(exc)):
                    raise
                replace_coordinator(exc)
                return None

    try:
        t_start = time.monotonic()
        infos = cluster.await_replicas(cfg, replicas)
        facts["replicas_start_s"] = round(time.monotonic() - t_start, 3)
        facts["replicas"] = infos
        console.end(starting, console.placement(infos))
        facts["coordinator"] = cluster.await_coordinator(cfg, coordinator, coord_ready)
        facts["coordinator"]["ready_after_s"] = round(time.monotonic() - t_coord, 3)
        capacity = [int(i.get("capacity") or cfg.engine.max_num_seqs) for i in infos]
        cluster.answer(coordinator.set_capacity.remote(capacity), "the coordinator (set_capacity)")
        _reset_stats(replicas)
        console.line(f"running {total} group(s) (problem x configuration) on {len(infos)} replica(s)")
        bar = progress_bar(cfg, total)
        for phase in phases:
            items = phase()
            if not items:
                continue
            items = recovery.attach(items)
            ask("submit", items)  # a coordinator replaced meanwhile was given them from `recovery`
            while True:
                update = ask("poll", 1.0)
                if update is None:  # a new coordinator took over: poll it
                    continue
                progress = update.progress
                replaced.saw(progress.replica_deaths)
                replaced.step(coordinator)
                for point, problem_id, blob in update.checkpoints:
                    recovery.checkpoint(point, problem_id, blob)
                for g in update.groups:
                    recovery.returned(g["point"], g["problem_id"])
                    grader.submit(g)
                for g in grader.ready():
                    _write(store, recovery, g, fp)
                failed.extend(update.errors)
                for err in update.errors:
                    recovery.failed(err)
                    log.error("group failed: %s", err)
                show(bar, update.progress, len(update.groups) + len(update.errors))
                if update.all_done:
                    break
            # a later phase (compute-matched) reads this one's results: finish grading first
            for g in grader.drain():
                _write(store, recovery, g, fp)
        facts.update(_generation_facts(_live_stats(replicas)))
        try:
            facts["coordinator"].update(ray.get(coordinator.stats.remote(), timeout=30))
        except Exception as exc:  # a replaced coordinator's figures are gone with it
            log.warning("coordinator stats unavailable: %s", exc)
        replaced.saw(facts["coordinator"].get("replica_deaths", []), replace=False)
        facts["moved_paths"] = moved_before + facts["coordinator"].get("moved_paths", 0)
    except KeyboardInterrupt:
        interrupted = True
        console.terminal().write("\nstopping: no new work; the actors are torn down and the checkpoints kept "
                                 "(Ctrl-C again to exit at once)\n")
        raise
    finally:
        if bar is not None:
            bar.close()
        t_tail = time.monotonic()
        try:
            if not interrupted:
                for g in grader.drain():  # groups that finished before a failure are saved
                    _write(store, recovery, g, fp)
        finally:  # the actors go even when grading could not finish
            facts.update(replaced.facts())
            facts["grading_tail_s"] = round(time.monotonic() - t_tail, 3)
            facts.update(grader.facts())
            grader.close(kill=interrupted)
            cluster.teardown([coordinator, *replaced.handles()])  # and the placement group(s)
    facts["failed_groups"] = failed  # the caller consolidates what finished, then fails the run
    return facts


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


def _write(store: ResultStore, recovery: Recovery, g: dict, fp: dict) -> None:
    """A finished group's result part, then its checkpoint is no longer needed."""
    store.write_group(g["point"], g["problem_id"], g["paths"], g["messages"],
                      fingerprint.for_group(fp, g["point"], g["problem_id"]))
    recovery.written(g["point"], g["problem_id"])


def _reset_stats(replicas: list, timeout_s: float = 30.0) -> None:
    """Zero each replica's counters, so they measure this run's generation only. A replica that
    does not answer in time is stuck already: it is killed, and the coordinator moves its paths
    and reports its death (so it is replaced) at its first request."""
    import ray

    from . import cluster

    refs = {r.stats.remote(reset=True): i for i, r in enumerate(replicas)}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except Exception as exc:  # died meanwhile: the coordinator will see it too
            log.warning("replica %d died before the run began: %s", refs[ref], type(exc).__name__)
    for ref in late:
        log.warning("replica %d did not answer within %.0f s before the run began: killed as stuck", refs[ref],
                    timeout_s)
        cluster.kill(replicas[refs[ref]])


def _live_stats(replicas: list) -> list[dict]:
    """Each replica's stats; a replica that died (its node with it) reports nothing."""
    import ray

    out = []
    for i, r in enumerate(replicas):
        try:
            out.append({"replica": i, **ray.get(r.stats.remote(), timeout=30)})
        except Exception as exc:
            log.warning("replica %d: no stats (%s)", i, type(exc).__name__)
            out.append({"replica": i, "dead": True})
    return out


def _generation_facts(stats: list[dict]) -> dict:
    """Generation time from the first request reaching a replica to the last token any replica
    produced, and how busy each replica was in that window."""
    firsts = [s["first_request_t"] for s in stats if s.get("first_request_t")]
    lasts = [s["last_token_t"] for s in stats if s.get("last_token_t")]
    gen = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    return {
        "generation_s": round(gen, 3),
        "replica_stats": [{**s, "busy_fraction": round(s["busy_s"] / gen, 4) if gen and s.get("busy_s") else None}
                          for s in stats],
    }


def _report(cfg: Config, store: ResultStore, paths_t, summary: dict) -> None:
    """The report files, then the console's last lines: the tables and where everything is."""
    from ..report import console_text, load_results, write_report

    try:
        written = write_report(store.root, plots=cfg.plots)
    except Exception as exc:  # the results are saved; the report is a view of them
        log.warning("the report could not be written (%s); rebuild it with `python -m orchestrator.report %s`",
                    exc, store.root)
        console.tables(console_text(load_results(store.root)))
        console.finish(store.root)
        return
    console.tables(written["text"])
    console.finish(store.root, written["html"])

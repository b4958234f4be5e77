"""The driver: validate, start Ray, place replicas and the coordinator, stream groups, report.

The driver only submits and waits. It loads the problems and checks the config before Ray
starts (a bad config costs nothing), skips groups already finished in `output_dir` (resume),
writes each finished group as soon as it arrives, and rebuilds the result files at the end.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from omegaconf import OmegaConf

from . import console
from .checkpoint import Recovery
# the GPU check kit (../shared/gpu/engine_probe.py) imports these two from here
from .cluster import engine_options  # noqa: F401
from .cluster import model_path as _model_path  # noqa: F401
from .config import Config, oversubscription, prompt_file, sampling_spec, validate
from .core import metrics
from .core.prompts import load_prompts
from .core.types import Problem
from .data import DatasetError, load_problems
from .errors import RunFailed
from .grader import Grader
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
    store.root.mkdir(parents=True, exist_ok=True)
    store.write_json("config.json", OmegaConf.to_container(OmegaConf.structured(cfg)))
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
    recovery = Recovery(cfg.output_dir, points)
    recovery.forget_done(store.is_done)
    started = time.monotonic()
    facts = _run_groups(cfg, points, prompts, phases, len(todo), store, recovery) if todo \
        else {"generation_s": 0.0}
    facts.update(recovery.facts())
    paths_t, _ = store.read_parts()
    summary = metrics.summarize(paths_t.to_pylist(), points=points)
    t_write = time.monotonic()
    store.consolidate(summary)
    store.write_json("run_info.json", {"wall_s": round(time.monotonic() - started, 3),
                                       "writing_s": round(time.monotonic() - t_write, 3),
                                       "groups_run": len(todo), "groups_skipped": skipped, **facts})
    _report(cfg, store, paths_t, summary)
    return summary


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


def _run_groups(cfg: Config, points, prompts, phases, total: int, store: ResultStore, recovery: Recovery) -> dict:
    with _Interrupts():
        return _groups(cfg, points, prompts, phases, total, store, recovery)


def _groups(cfg: Config, points, prompts, phases, total: int, store: ResultStore, recovery: Recovery) -> dict:
    """Run the phases' groups on fresh replicas; returns the run's timing and fault record. A
    coordinator that dies is replaced, and given every group it had, from their checkpoints; a
    replica that dies is replaced when the cluster has room. Ctrl-C (or SIGTERM) stops the run
    within seconds, checkpoints kept; a second one exits at once."""
    import ray

    from . import cluster
    from .console import progress_bar, show

    facts: dict = {}
    t0 = time.monotonic()
    with console.step(f"preparing the model {cfg.model.path}" if cfg.engine.kind != "fake"
                      else "preparing the fake engine") as step:
        model = cluster.model_path(cfg)
        step.done(model)
    facts["model_prepare_s"] = round(time.monotonic() - t0, 3)
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
    progress: dict = {}
    interrupted = False

    def replace_coordinator(exc: BaseException):
        nonlocal coordinator, moved_before, progress
        moved_before += progress.get("failovers", 0)
        progress = {}
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
        for i, r in enumerate(replicas):
            cluster.answer(r.stats.remote(reset=True), f"replica {i} (stats)")
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
                progress = update["progress"]
                replaced.saw(progress.get("replica_deaths", []))
                replaced.step(coordinator)
                for point, problem_id, blob in update.get("checkpoints", []):
                    recovery.checkpoint(point, problem_id, blob)
                for g in update["groups"]:
                    recovery.returned(g["point"], g["problem_id"])
                    grader.submit(g)
                for g in grader.ready():
                    _write(store, recovery, g)
                failed.extend(update["errors"])
                for err in update["errors"]:
                    recovery.failed(err)
                    log.error("group failed: %s", err)
                show(bar, update["progress"], len(update["groups"]) + len(update["errors"]))
                if update["all_done"]:
                    break
            # a later phase (compute-matched) reads this one's results: finish grading first
            for g in grader.drain():
                _write(store, recovery, g)
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
        if not interrupted:
            for g in grader.drain():  # groups that finished before a failure are saved
                _write(store, recovery, g)
        facts.update(replaced.facts())
        facts["grading_tail_s"] = round(time.monotonic() - t_tail, 3)
        facts.update(grader.facts())
        grader.close(kill=interrupted)
        cluster.teardown([coordinator, *replaced.handles()])  # and the placement group(s)
    if failed:
        raise RunFailed(f"{len(failed)} group(s) failed (finished groups and checkpoints are saved; rerun to "
                        f"retry): " + "; ".join(failed[:5]))
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


def _write(store: ResultStore, recovery: Recovery, g: dict) -> None:
    """A finished group's result part, then its checkpoint is no longer needed."""
    store.write_group(g["point"], g["problem_id"], g["paths"], g["messages"])
    recovery.written(g["point"], g["problem_id"])


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
    from .report import sweep_table, write_report

    try:
        written = write_report(store.root, plots=cfg.plots)
    except Exception as exc:  # the results are saved; the report is a view of them
        log.warning("the report could not be written (%s); rebuild it with `python -m orchestrator.report %s`",
                    exc, store.root)
        console.tables(sweep_table(summary))
        console.finish(store.root)
        return
    console.tables(written["text"])
    console.finish(store.root, written["html"])

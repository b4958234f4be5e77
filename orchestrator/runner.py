"""The driver: validate, start Ray, place replicas and the coordinator, stream groups, report.

The driver only submits and waits. It loads the problems and checks the config before Ray
starts (a bad config costs nothing), skips groups already finished in `output_dir` (resume),
writes each finished group as soon as it arrives, and rebuilds the result files at the end.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict

from omegaconf import OmegaConf

from .config import Config, prompt_file, sampling_spec, validate
from .core import metrics
from .core.prompts import load_prompts
from .core.types import Problem
from .data import load_problems
from .results import ResultStore

log = logging.getLogger(__name__)

REPLICA_NAME = "leap-replica-{}"
NAMESPACE = "orchestrator"


def run(cfg: Config) -> dict:
    """Run (or resume) every sweep point x problem group; returns summary.json's content."""
    points = validate(cfg)
    prompts = load_prompts(prompt_file(cfg.leap.prompts))
    problems = load_problems(cfg.dataset.name, path=cfg.dataset.path, limit=cfg.dataset.limit,
                             seed=cfg.leap.seed, hub_id=cfg.dataset.hub_id, split=cfg.dataset.split)
    if not problems:
        raise ValueError(f"dataset {cfg.dataset.name} ({cfg.dataset.path or 'hub'}) has no problems")
    store = ResultStore(cfg.output_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    store.write_json("config.json", OmegaConf.to_container(OmegaConf.structured(cfg)))
    todo = [(pt, pb) for pt in points for pb in problems if not store.is_done(pt, pb.id)]
    skipped = len(points) * len(problems) - len(todo)
    if skipped and not todo:
        log.info("every group is already complete in %s: reporting only (use another output_dir, or "
                 "delete this one, to run again)", store.root)
    elif skipped:
        log.info("resume: %d of %d groups already complete in %s", skipped, skipped + len(todo), store.root)
    # compute-matched points wait for the point they match: their budgets come from its usage
    waits = {pt for pt, p in points.items() if p.match_point is not None and not p.token_budget}
    first = [(pt, pb, {}) for pt, pb in todo if pt not in waits]
    later = [(pt, pb) for pt, pb in todo if pt in waits]
    phases = [lambda: first, lambda: _matched_items(store, points, later)]
    started = time.monotonic()
    generation_s = _run_groups(cfg, points, prompts, phases, len(todo), store) if todo else 0.0
    paths_t, _ = store.read_parts()
    summary = metrics.summarize(paths_t.to_pylist())
    store.consolidate(summary)
    store.write_json("run_info.json", {"wall_s": round(time.monotonic() - started, 3),
                                       "generation_s": round(generation_s, 3),
                                       "groups_run": len(todo), "groups_skipped": skipped})
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


def _run_groups(cfg: Config, points, prompts, phases, total: int, store: ResultStore) -> float:
    """Run the phases' groups on fresh replicas; returns seconds from first submit to last result."""
    import ray

    from .coordinator import Coordinator

    model = _model_path(cfg)
    _init_ray(cfg)
    replicas, pg = _start_replicas(cfg, model)
    coordinator = ray.remote(Coordinator).options(
        name="leap-coordinator", namespace=NAMESPACE, num_cpus=1, max_concurrency=1000,
    ).remote(replicas, "fake" if cfg.engine.kind == "fake" else model, points, prompts,
             sampling_spec(cfg), cfg.replicas.placement, cfg.replicas.max_groups_in_flight,
             cfg.leap.embedding_model)
    failed: list[str] = []
    bar = _progress_bar(cfg, total)
    submitted = time.monotonic()
    try:
        for phase in phases:
            items = phase()
            if not items:
                continue
            ray.get(coordinator.submit.remote(items))
            while True:
                update = ray.get(coordinator.poll.remote(1.0))
                for g in update["groups"]:
                    store.write_group(g["point"], g["problem_id"], g["paths"], g["messages"])
                failed.extend(update["errors"])
                for err in update["errors"]:
                    log.error("group failed: %s", err)
                _show(bar, update["progress"], len(update["groups"]) + len(update["errors"]))
                if update["all_done"]:
                    break
    finally:
        if bar is not None:
            bar.close()
        for handle in [coordinator, *replicas]:
            try:
                ray.kill(handle)
            except Exception:  # already gone
                pass
        try:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(pg)
        except Exception:
            pass
    if failed:
        raise RuntimeError(f"{len(failed)} group(s) failed (finished groups are saved; rerun to retry): "
                           + "; ".join(failed[:5]))
    return time.monotonic() - submitted


def _model_path(cfg: Config) -> str:
    if cfg.engine.kind == "fake":
        return "fake"
    from .models import resolve_model

    return resolve_model(cfg.model.path)


def _init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, namespace=NAMESPACE)
        return
    # Ray 2.52+ turns token authentication on for a new local cluster and writes
    # ~/.ray/auth_token; every later `ray start --head` on the machine then requires the token,
    # which `ray job submit` does not send by default. This in-process cluster lives and dies
    # with the driver, so it opts out unless the user chose a mode.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    need = math.ceil(cfg.replicas.count * cfg.replicas.cpus_per_replica) + 1
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, need)
    ray.init(num_cpus=num_cpus, num_gpus=cfg.ray.num_gpus, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=True)


def replica_class(kind: str):
    if kind == "fake":
        from .engines.fake import FakeReplica

        return FakeReplica
    from .engines.vllm_replica import VLLMReplica

    return VLLMReplica


def engine_options(cfg: Config) -> dict:
    opts = asdict(cfg.engine)
    opts.pop("kind")
    opts["tensor_parallel_size"] = max(cfg.replicas.gpus_per_replica, 1)
    opts["cpus_per_replica"] = cfg.replicas.cpus_per_replica
    opts["run_seed"] = cfg.leap.seed  # the fake writes by the run's seed, whichever replica serves
    return opts


def _start_replicas(cfg: Config, model: str):
    """One placement group, a bundle per replica (its GPUs and CPUs); replicas named by index."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rc = cfg.replicas
    gpus = rc.gpus_per_replica
    have = ray.cluster_resources().get("GPU", 0)
    if cfg.engine.kind == "fake" and gpus and not have:
        # fake replicas use GPUs only to mimic placement; on a machine without any, ask for none
        log.info("fake engine on a cluster without GPUs: replicas ask for none "
                 "(replicas.gpus_per_replica=%s ignored)", gpus)
        gpus = 0
    if gpus * rc.count > have and not _autoscaling(cfg):
        raise RuntimeError(f"replicas.count={rc.count} x replicas.gpus_per_replica={gpus} needs "
                           f"{gpus * rc.count} GPUs but this Ray cluster has {have:g}; lower them "
                           f"(replicas.gpus_per_replica=0 with engine=cpu on a CPU machine)")
    bundle = {"CPU": rc.cpus_per_replica}
    if gpus:
        bundle["GPU"] = gpus
    pg = placement_group([dict(bundle) for _ in range(rc.count)], strategy=rc.strategy)
    ready, _ = ray.wait([pg.ready()], timeout=600)
    if not ready:
        raise RuntimeError(f"could not place {rc.count} replica(s) of {bundle}: the cluster has "
                           f"{ray.cluster_resources()} (check replicas.count and replicas.gpus_per_replica)")
    cls = ray.remote(replica_class(cfg.engine.kind))
    replicas = []
    for i in range(rc.count):
        replicas.append(cls.options(
            name=REPLICA_NAME.format(i), namespace=NAMESPACE,
            num_cpus=rc.cpus_per_replica, num_gpus=gpus, max_concurrency=1000,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            # vLLM logs every step of its start-up at INFO; keep the driver's console readable
            runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
        ).remote(i, model, engine_options(cfg), cfg.leap.seed + i))
    infos = ray.get([r.info.remote() for r in replicas])  # waits until every engine is up
    for info in infos:
        log.info("replica %s up on node %s (%s)", info["index"], info["node"][:12], info["model"])
    return replicas, pg


def _autoscaling(cfg: Config) -> bool:
    """Only a cluster we joined can grow; the local Ray this driver started cannot."""
    return bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def _progress_bar(cfg: Config, total: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="groups", unit="group", dynamic_ncols=True)


def _show(bar, progress: dict, finished: int) -> None:
    """Groups done (the bar), groups per current round, active paths, tokens/s, cache hit rate."""
    per_round: dict[int, int] = {}
    for r in progress["rounds"].values():
        per_round[r] = per_round.get(r, 0) + 1
    parts = [" ".join(f"r{r}:{n}" for r, n in sorted(per_round.items())) or "r-",
             f"paths {progress['active_paths']}", f"{progress['tokens_per_s']:.0f} tok/s"]
    if progress["cache_hit_rate"] is not None:
        parts.append(f"cache {progress['cache_hit_rate']:.0%}")
    if progress["failovers"]:
        parts.append(f"failovers {progress['failovers']}")
    text = " | ".join(parts)
    if bar is None:
        log.debug("progress: %s", text)
        return
    bar.update(finished)
    bar.set_postfix_str(text, refresh=True)


def _report(cfg: Config, store: ResultStore, paths_t, summary: dict) -> None:
    from .report import plot, problem_table, sweep_table

    print(problem_table(paths_t))
    print(sweep_table(summary))
    if cfg.plots:
        try:
            for png in plot(store.root):
                log.info("plot: %s", png)
        except Exception as exc:  # plots are a convenience; results are already saved
            log.warning("plots failed: %s", exc)
    print(f"results: {store.root.resolve()}")

"""The coordinator: runs every group's round state machine and moves requests to replicas.

It is an async Ray actor (1 CPU, off the GPUs). Each group (sweep point x problem) runs as its
own asyncio task, so problems advance independently and a slow one never holds back another;
barriers are per group. Paths are assigned to replicas once (sticky: their KV cache stays warm)
and the coordinator keeps every path's token state, so when a replica dies its paths move to a
live replica, which is sent their whole token list once.

The driver calls `submit()` and then `poll()` until every group is done; `poll` hands back the
finished groups' rows (the driver writes them) and a progress snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from .core.group import Group, LeapParams
from .core.prompts import PromptSet
from .core.types import GenRequest, GenResult, PathStateMissing, Problem, ReplicaDead, SamplingSpec
from .engines import node_id

log = logging.getLogger(__name__)

PLACEMENTS = ("spread", "pack")


@dataclass
class _GroupProgress:
    point: str
    problem: str
    paths: int
    round: int = 1
    active: int = 0
    done: bool = False


def load_tokenizer(spec: str):
    """`fake` gives the fake replica's tokenizer; anything else is a checkpoint directory."""
    if spec == "fake":
        from .engines.fake import FakeTokenizer

        return FakeTokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)


def render_prompt(tok, prompts: PromptSet, problem: Problem, params: LeapParams) -> list[int]:
    """The chat-templated prompt (plus the LeaP-mode assistant prefill) as token ids; rendered
    once per group, then only appended to."""
    messages = [{"role": "user", "content": prompts.user_turn(problem, params.uses_leap_note)}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    prefill = prompts.prefill(problem, params.uses_leap_note)
    return list(ids) + (tok.encode(prefill, add_special_tokens=False) if prefill else [])


def _is_replica_death(exc: BaseException) -> bool:
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    except ImportError:  # pragma: no cover - ray is always there when actors are
        return isinstance(exc, ReplicaDead)
    return isinstance(exc, (ReplicaDead, RayActorError, ActorDiedError, ActorUnavailableError))


class Coordinator:
    def __init__(
        self,
        replicas: list,
        tokenizer: str,
        params: dict[str, LeapParams],
        prompts: PromptSet,
        sampling: SamplingSpec,
        placement: str = "spread",
        max_groups_in_flight: int = 8,
        embed_model: str | None = None,
    ):
        if placement not in PLACEMENTS:
            raise ValueError(f"replicas.placement must be one of {PLACEMENTS}, got {placement!r}")
        self.replicas = list(replicas)
        self.alive = [True] * len(self.replicas)
        self.load = [0] * len(self.replicas)
        self.tok = load_tokenizer(tokenizer)
        self.params = params
        self.prompts = prompts
        self.sampling = sampling
        self.placement = placement
        self.embed = None
        if any(p.similarity == "embedding" for p in params.values()):
            from .embedding import load_embedder

            self.embed = load_embedder(embed_model)
        self.sem = asyncio.Semaphore(max(1, max_groups_in_flight))
        self.assign: dict[str, int] = {}  # path key -> replica index
        self.holder: dict[str, int] = {}  # path key -> replica that holds its tokens
        self.finished: list[dict] = []
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task] = []
        self.progress: dict[str, _GroupProgress] = {}
        self.started = time.monotonic()
        self.sampled_tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.failovers = 0
        self.wake = asyncio.Event()
        self.node = node_id()

    # -- driver API ---------------------------------------------------------------------------
    async def submit(self, items: list[tuple[str, Problem, dict]]) -> int:
        """Start groups: (sweep point, problem, per-group overrides of the point's LeapParams)."""
        for point, problem, overrides in items:
            key = f"{point}|{problem.id}"
            params = replace(self.params[point], **(overrides or {}))
            self.progress[key] = _GroupProgress(point, problem.id, params.paths)
            self.tasks.append(asyncio.ensure_future(self._guarded(point, problem, params)))
        return len(items)

    async def poll(self, timeout: float = 1.0) -> dict:
        """Finished groups since the last poll, plus a progress snapshot."""
        if not self.finished and not self.errors and not self._all_done():
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        done, self.finished = self.finished, []
        errors, self.errors = self.errors, []
        return {"groups": done, "errors": errors, "progress": self.snapshot(), "all_done": self._all_done()}

    def snapshot(self) -> dict:
        groups = list(self.progress.values())
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return {
            "groups_total": len(groups),
            "groups_done": sum(g.done for g in groups),
            "active_paths": sum(g.active for g in groups if not g.done),
            "rounds": {f"{g.point}|{g.problem}": g.round for g in groups if not g.done},
            "tokens_per_s": self.sampled_tokens / elapsed,
            "sampled_tokens": self.sampled_tokens,
            "cache_hit_rate": self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None,
            "replicas_alive": sum(self.alive),
            "failovers": self.failovers,
            "node": self.node,
        }

    def _all_done(self) -> bool:
        return all(t.done() for t in self.tasks)

    # -- groups -------------------------------------------------------------------------------
    async def _guarded(self, point: str, problem: Problem, params: LeapParams) -> None:
        async with self.sem:
            try:
                rows, messages = await self._run_group(point, problem, params)
                self.finished.append({"point": point, "problem_id": problem.id,
                                      "benchmark": problem.benchmark, "paths": rows, "messages": messages})
            except Exception as exc:  # one broken group must not sink the others
                log.exception("group %s|%s failed", point, problem.id)
                self.errors.append(f"{point}|{problem.id}: {type(exc).__name__}: {exc}")
            finally:
                self.progress[f"{point}|{problem.id}"].done = True
                self.wake.set()

    async def _run_group(self, point: str, problem: Problem, params: LeapParams) -> tuple[list[dict], list[dict]]:
        prompt = render_prompt(self.tok, self.prompts, problem, params)
        group = Group(f"{point}|{problem.id}", problem, prompt, params, self.prompts, self.tok,
                      self.sampling, embed=self.embed, sweep_point=point)
        self._place(group)
        prog = self.progress[group.key]
        prog.active = params.paths
        pending: set[asyncio.Future] = set()
        while not group.done:
            for req in group.requests():
                pending.add(asyncio.ensure_future(self._send(group, req)))
            if not pending:
                raise RuntimeError(f"group {group.key} is stuck: no request can run")
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                group.on_result(fut.result())
            prog.round = min((p.round for p in group.paths if p.phase != "done"), default=prog.round)
            prog.active = sum(p.phase != "done" for p in group.paths)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, group.records)  # grading may take a while
        await self._release(group)
        return rows, list(group.messages)

    def _place(self, group: Group) -> None:
        """Sticky assignment: each path gets a replica once, for its whole life."""
        live = [i for i, ok in enumerate(self.alive) if ok]
        if not live:
            raise ReplicaDead("no live replica left")
        if self.placement == "pack":
            target = min(live, key=lambda i: (self.load[i], i))
            for p in group.paths:
                self.assign[p.key] = target
                self.load[target] += 1
            return
        for p in group.paths:
            target = min(live, key=lambda i: (self.load[i], i))
            self.assign[p.key] = target
            self.load[target] += 1

    async def _release(self, group: Group) -> None:
        by_replica: dict[int, list[str]] = {}
        for p in group.paths:
            r = self.assign.pop(p.key)
            self.holder.pop(p.key, None)
            self.load[r] -= 1
            by_replica.setdefault(r, []).append(p.key)
        for r, keys in by_replica.items():
            if self.alive[r]:
                try:
                    await self.replicas[r].drop.remote(keys)
                except Exception as exc:  # freeing memory is best effort
                    log.warning("could not drop paths on replica %d: %s", r, exc)

    async def _send(self, group: Group, req: GenRequest) -> GenResult:
        key = req.path_key
        for _attempt in range(len(self.replicas) + 2):
            r = self.assign[key]
            if self.holder.get(key) != r:
                req.full = group.full_tokens(key)
            try:
                res: GenResult = await self.replicas[r].generate.remote(req)
            except PathStateMissing:
                self.holder.pop(key, None)  # e.g. a restarted actor: send everything again
                continue
            except Exception as exc:
                if not _is_replica_death(exc):
                    raise
                self._replica_died(r, exc)
                group.replica_lost(key)
                continue
            self.holder[key] = r
            req.full = None
            self.sampled_tokens += len(res.token_ids)
            self.prompt_tokens += res.prompt_tokens
            self.cached_tokens += res.cached_tokens
            return res
        raise ReplicaDead(f"path {key}: no replica could serve it")

    def _replica_died(self, r: int, exc: BaseException) -> None:
        if self.alive[r]:
            log.error("replica %d died (%s); moving its paths to live replicas", r, exc)
            self.alive[r] = False
        live = [i for i, ok in enumerate(self.alive) if ok]
        if not live:
            raise ReplicaDead("every replica has died") from exc
        for key, owner in list(self.assign.items()):
            if owner == r:
                target = min(live, key=lambda i: (self.load[i], i))
                self.assign[key] = target
                self.load[target] += 1
                self.load[r] -= 1
                self.holder.pop(key, None)
                self.failovers += 1

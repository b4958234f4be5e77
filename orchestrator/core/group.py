"""The per-problem round state machine of LeaP (DESIGN.md section 1), written like a scheduler.

A `Group` holds the N paths of one problem at one sweep point. It never calls an engine: the
caller asks `requests()` for what can run now, sends those `GenRequest`s wherever it likes, and
feeds each `GenResult` back through `on_result()` in any order. Paths advance on their own between
barriers; at a communication round the group waits until every active path has its summary, then
routes and appends the peer blocks. `done` turns true when every path has finished, and
`records()` returns the result rows.

What a path receives at a barrier and when a path or the problem stops are decided by the
method the parameters name (`core.methods`); the group only runs the rounds.

Path phases:  segment -> [summary -> barrier ->] segment ... -> force -> done
              a segment that emits the end-of-thinking marker goes to `answer` (the final answer
              after thinking) and leaves the group; EOS or a full context ends the path at once.
              A stopping rule may add (`core.stops`): `probe -> held` after a segment (an answer
              probe, then a wait for the problem's other paths), `pending` (a segment end whose
              outcome waits on other paths), and `done` early (stopped).
"""

from __future__ import annotations

import logging

from . import snapshot as snapshots
from .methods import Barrier
from .params import LeapParams
from .paths import PathState, TokenIds
from .peers import PeerBlocks
from .prompts import SUMMARY_CLOSE, SUMMARY_OPEN, THINK_END, PromptSet
from .rng import rng_for, stable_int
from .rows import count_rows, path_rows
from .stops import BRANCHES, StopChecks
from .text import extract_summary, paragraph_cut, repair_summary
from .types import GenRequest, GenResult, Problem, SamplingSpec, Tokenizer

log = logging.getLogger(__name__)

REQUEST_PHASES = ("segment", "summary", "answer", "force", "probe")  # phases that send a request


class Group(StopChecks):
    """One problem's N paths at one sweep point."""

    def __init__(
        self,
        key: str,
        problem: Problem,
        prompt_ids: list[int],
        params: LeapParams,
        prompts: PromptSet,
        tokenizer: Tokenizer,
        sampling: SamplingSpec = SamplingSpec(),
        embed=None,
        sweep_point: str = "default",
    ):
        self.method = params.method
        self.key = key
        self.problem = problem
        self.params = params
        self.prompts = prompts
        self.tok = tokenizer
        self.sampling = sampling
        self.embed = embed
        self.sweep_point = sweep_point
        self.messages: list[dict] = []
        self.barriers_released = 0  # communication rounds completed (a checkpoint point each)
        self.resumed_from_round: int | None = None  # set by `restore`: the round it went on with
        self.paths = [
            PathState(
                index=i,
                key=f"{key}/{i}",
                tokens=TokenIds(prompt_ids),
                prompt_len=len(prompt_ids),
                segment_start=len(prompt_ids),
            )
            for i in range(params.paths)
        ]
        self._by_key = {p.key: p for p in self.paths}
        self.peers = PeerBlocks(prompts, tokenizer, params.similarity)  # barrier work as summaries arrive
        self.rule_state: dict = {}  # the stopping rule's own state in this group (JSON-able; snapshotted)
        self._forcing: list[int] | None = None  # the answer-forcing suffix's ids (answer probes)

    # -- the plan ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return all(p.phase == "done" for p in self.paths)

    def work(self) -> int:
        """The group's work done, in sampled tokens against `paths x params.sampled_budget`."""
        return sum(self.path_work(p.key) for p in self.paths)

    def path_work(self, path_key: str) -> int:
        """A path's work done: the tokens it has sampled (every request's), at most its budget;
        a path that has finished, early or not, counts its whole budget."""
        p, budget = self._by_key.get(path_key), self.params.sampled_budget
        if p is None:  # not this group's (`on_result` refuses it)
            return 0
        sampled = sum(r["new_tokens"] for r in p.requests if r.get("kind") not in BRANCHES)
        return budget if p.phase == "done" else min(sampled, budget)

    def can_request(self) -> bool:
        """Whether `requests()` would return something now (a lock-step schedule that finds a
        live group where it would not is stuck)."""
        return any(self._ready(p) for p in self.paths)

    def _ready(self, p: PathState) -> bool:
        """The path can send its next request now."""
        if p.in_flight is not None or p.phase not in REQUEST_PHASES:
            return False
        return not (p.phase == "segment" and not p.requests
                    and self.method.stopping.waits_to_start(self.params, p, self.paths, self.rule_state))

    def requests(self) -> list[GenRequest]:
        """Requests for every path that can advance now and has none under way."""
        out = []
        for p in self.paths:
            if self._ready(p):
                out.append(self._request(p))
                p.in_flight = p.phase
        return out

    def _request(self, p: PathState) -> GenRequest:
        prm = self.params
        stop: list[str] = []
        min_tokens = logprobs = 0
        append = p.tokens[p.synced:].tolist()
        if p.phase == "segment":
            p.segment_start = len(p.tokens)
            max_tokens = self.method.stopping.segment_tokens(prm, p)
            stop = [THINK_END, *self.method.communication.segment_stops(prm, p.round)]
            min_tokens = min(prm.segment_min_tokens, max_tokens)
            logprobs = self.method.stopping.logprobs(prm)
        elif p.phase == "probe":  # on a copy of the path: the forcing suffix, a short answer
            max_tokens = prm.probe_tokens
            append += self.forcing_ids()
        elif p.phase == "summary":
            max_tokens, stop = prm.summary_tokens, [SUMMARY_CLOSE, THINK_END]
        elif p.phase == "answer":
            max_tokens = prm.answer_tokens
        else:  # force
            max_tokens = prm.summary_tokens
        seed = stable_int(prm.seed, self.problem.id, p.index, p.round, p.phase) % (2**31)
        return GenRequest(
            path_key=p.key,
            keep=p.synced,
            append=append,
            max_tokens=max(int(max_tokens), 1),
            stop=stop,
            sampling=SamplingSpec(
                self.sampling.temperature, self.sampling.top_p, self.sampling.top_k,
                self.sampling.min_p, seed,
            ),
            min_tokens=min_tokens,
            kind=p.phase,
            branch=p.phase in BRANCHES,
            logprobs=logprobs,
        )

    def full_tokens(self, path_key: str) -> list[int]:
        """What a replica that lost (or never had) the path must be sent: its synced prefix."""
        p = self._by_key[path_key]
        return p.tokens[: p.synced].tolist()

    def replica_lost(self, path_key: str) -> None:
        """The path's replica died: nothing of it is cached anywhere any more."""
        p = self._by_key[path_key]
        p.computed = 0

    # -- results -------------------------------------------------------------------------------
    def on_result(self, res: GenResult) -> None:
        p = self._by_key.get(res.path_key)
        if p is None or p.in_flight is None:
            raise ValueError(f"group {self.key}: unexpected result for {res.path_key}")
        kind, p.in_flight = p.in_flight, None
        keep = p.synced
        p.requests.append({
            "round": p.round,
            "kind": kind,
            "prompt_tokens": res.prompt_tokens,
            "cached_tokens": res.cached_tokens,
            "reusable_tokens": min(p.computed, keep),
            "new_tokens": len(res.token_ids),
            "replica": res.replica,
        })
        p.replica, p.node = res.replica, res.node
        new = list(res.token_ids)
        if kind not in BRANCHES:
            # The replica now holds our tokens plus the new ones, with KV for all but the last new
            # one; each handler appends `new` first and then edits (cuts move these marks back).
            # A branch (an answer probe) left the path's stored tokens as they were.
            base = len(p.tokens)
            p.synced = base + len(new)
            if new:
                p.computed = base + len(new) - 1
        getattr(self, f"_after_{kind}")(p, res, new)
        if any(q.phase == "pending" for q in self.paths):
            self._resolve_pending()
        if any(q.phase in ("barrier", "held") for q in self.paths):
            self._maybe_release()

    def _after_segment(self, p: PathState, res: GenResult, new: list[int]) -> None:
        p.append(new, "segment")
        p.sampled_segments += len(new)
        if res.confidences is not None:
            p.confidences.extend(res.confidences[: len(new)])
        if self._check_segment_end(p, res.finish_reason, res.stop_str):
            return None
        return self._segment_end(p, res.finish_reason, res.stop_str)

    def _segment_end(self, p: PathState, finish_reason: str, stop_str: str | None) -> None:
        """Where a segment that the stopping rule let stand leads."""
        if finish_reason in ("eos", "context"):
            return self._finish(p, finish_reason)
        if stop_str == THINK_END:
            if self.params.answer_tokens > 0:
                p.phase = "answer"
                return None
            return self._finish(p, "think_end")
        if stop_str == SUMMARY_OPEN:  # the model opened its own summary (a segment stop)
            p.summary_start = len(p.tokens)
            p.phase = "summary"
            return None
        if self.method.stopping.last_segment(self.params, p):
            return self._force(p)
        if self.method.communication.communicates(self.params, p.round):
            return self._start_summary(p)
        if self.method.stopping.probes(self.method.communication):
            p.phase = "probe"
            return None
        p.round += 1
        p.phase = "segment"
        return None

    def _start_summary(self, p: PathState) -> None:
        segment = p.tokens[p.segment_start:].tolist()
        keep = paragraph_cut(self.tok, segment)
        p.cut(p.segment_start + keep)
        if p.confidences and keep < len(segment):  # confidences follow the segment tokens kept
            del p.confidences[max(0, len(p.confidences) - (len(segment) - keep)):]
        lead = "" if keep < len(segment) else "\n\n"
        rng = rng_for(self.params.seed, self.problem.id, p.index, p.round, "summary_prompt")
        text = lead + self.prompts.summary_prompt(rng)
        p.summary_start = len(p.tokens)
        p.append(self.tok.encode(text), "summary_prompt")
        p.phase = "summary"

    def _after_summary(self, p: PathState, res: GenResult, new: list[int]) -> None:
        base = len(p.tokens)
        p.append(new, "summary")
        if res.finish_reason == "context":
            return self._finish(p, "context")
        if new and new[-1] == self.tok.eos_token_id:
            p.cut(len(p.tokens) - 1)  # an EOS inside a summary would end the path later
        keep, fix = repair_summary(self.tok, p.tokens[base:].tolist())
        p.cut(base + keep)
        if fix:
            p.append(self.tok.encode(fix), "summary_fix")
        p.summaries.append(extract_summary(self.tok.decode(p.tokens[p.summary_start:].tolist())))
        p.phase = "barrier"
        self.peers.arrive(p)
        return None

    def _after_answer(self, p: PathState, res: GenResult, new: list[int]) -> None:
        p.append(new, "answer")
        self._finish(p, "think_end" if res.finish_reason != "context" else "context")

    def _after_force(self, p: PathState, res: GenResult, new: list[int]) -> None:
        p.append(new, "answer")
        self._finish(p, "forced" if res.finish_reason != "context" else "context")

    def _force(self, p: PathState) -> None:
        if not self.params.force_answer:
            return self._finish(p, "length")
        p.append(self.tok.encode(self.prompts.forcing(self.problem.kind)), "force")
        p.phase = "force"
        return None

    def _finish(self, p: PathState, reason: str) -> None:
        p.phase, p.finish = "done", reason

    # -- barrier -------------------------------------------------------------------------------
    def _maybe_release(self) -> None:
        if any(q.phase in ("segment", "summary", "probe", "pending") for q in self.paths):
            return
        waiting = [q for q in self.paths if q.phase == "barrier"]
        if not waiting:
            return self._release_held()
        round_ = waiting[0].round
        summaries = [q.summaries[-1] for q in waiting]
        lengths = None
        if self.method.communication.needs_lengths:
            lengths = self.peers.lengths(waiting) or tuple(len(self.tok.encode(text)) for text in summaries)
        barrier = Barrier(self.params, self.problem, round_, tuple(waiting), tuple(summaries),
                          tuple(self.paths), embed=self.embed, similarity=self.peers.matrix(waiting),
                          lengths=lengths, state=self.rule_state)
        if self.method.stopping.stop_group(barrier):
            for q in waiting:
                self._stop_and_force(q)
        else:
            self._route(barrier)
        self.barriers_released += 1
        self.peers.clear()

    def _route(self, barrier: Barrier) -> None:
        waiting, summaries = list(barrier.waiting), list(barrier.summaries)
        routes = self.method.communication.route(barrier)
        if len(routes) != len(waiting):
            raise ValueError(f"group {self.key}: method {self.method.name} routed {len(routes)} of {len(waiting)} paths")
        for q, peers in zip(waiting, routes):
            q.append(self.peers.block(summaries, waiting, peers), "comment")
            for rank, (j, sim) in enumerate(peers, start=1):
                self.messages.append({
                    "sweep_point": self.sweep_point,
                    "benchmark": self.problem.benchmark,
                    "problem_id": self.problem.id,
                    "round": barrier.round,
                    "recipient": q.index,
                    "sender": waiting[j].index,
                    "rank": rank,
                    "similarity": round(float(sim), 6),
                    "summary": summaries[j],
                })
            q.round += 1
            q.phase = "segment"

    # -- results and checkpoints ---------------------------------------------------------------
    def records(self) -> list[dict]:
        """One row per path (the paths.parquet schema, minus the run's sweep columns)."""
        return path_rows(self.paths, self.problem, self.tok, self.sweep_point, self.resumed_from_round,
                         self.params)

    def counts(self) -> list[dict]:
        """`records()` without text: each path's token counts (for a plan)."""
        return count_rows(self.paths, self.problem, self.sweep_point, self.params)

    def snapshot(self) -> bytes:
        """The group's whole state as compact bytes (see `restore`). Taken after a barrier
        release, it loses nothing but requests under way, which `restore` sends again."""
        return snapshots.pack(self)

    @classmethod
    def restore(
        cls,
        blob: bytes,
        problem: Problem,
        prompt_ids: list[int],
        params: LeapParams,
        prompts: PromptSet,
        tokenizer: Tokenizer,
        sampling: SamplingSpec = SamplingSpec(),
        embed=None,
        sweep_point: str | None = None,
    ) -> "Group":
        """Rebuild a group from `snapshot()` bytes; it continues exactly where the snapshot was.

        Nothing is assumed about replicas: every path is marked as held by none (its next request
        carries its whole token list), and a request that was under way is asked again. Raises
        `CheckpointError` when the bytes are damaged or were made for another problem, sweep
        point, prompt or parameters (the caller then starts the group afresh)."""

        def make(key: str, point: str) -> Group:
            return cls(key, problem, prompt_ids, params, prompts, tokenizer, sampling, embed=embed,
                       sweep_point=point)

        group = snapshots.restore(blob, problem, prompt_ids, params, sweep_point, make)
        if any(p.phase == "pending" for p in group.paths):
            group._resolve_pending()
        if any(p.phase in ("barrier", "held") for p in group.paths):
            group._maybe_release()
        return group

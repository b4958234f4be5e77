"""The per-problem round state machine of LeaP (DESIGN.md section 1), written like a scheduler.

A `Group` holds the N paths of one problem at one sweep point. It never calls an engine: the
caller asks `requests()` for what can run now, sends those `GenRequest`s wherever it likes, and
feeds each `GenResult` back through `on_result()` in any order. Paths advance on their own between
barriers; at a communication round the group waits until every active path has its summary, then
routes and appends the peer blocks. `done` turns true when every path has finished, and
`records()` returns the result rows.

Path phases:  segment -> [summary -> barrier ->] segment ... -> force -> done
              a segment that emits the end-of-thinking marker goes to `answer` (the final answer
              after thinking) and leaves the group; EOS or a full context ends the path at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import routing
from .grading import canonical_answer, extract_answer, grade
from .prompts import SUMMARY_CLOSE, SUMMARY_OPEN, THINK_END, PromptSet
from .rng import rng_for, stable_int
from .text import extract_summary, paragraph_cut, repair_summary, strip_comments
from .types import GenRequest, GenResult, Problem, SamplingSpec, Tokenizer

log = logging.getLogger(__name__)

MODES = ("leap", "leap_t", "independent", "compute_matched")
INJECTED = ("summary_prompt", "summary_fix", "comment", "force")


@dataclass(frozen=True)
class LeapParams:
    """Every knob of the method; defaults are the paper's (QwQ/R1-distill, 16K budget)."""

    paths: int = 32
    T: int = 4096
    max_rounds: int = 4
    comm_rounds: tuple[int, ...] | None = None  # None: every round but the last
    top_k: int = 4
    router: str = "dispersed"
    similarity: str = "indel"
    summary_tokens: int = 256
    answer_tokens: int = 1024  # after the end-of-thinking marker: the written-out answer
    mode: str = "leap"
    token_budget: int | None = None  # compute_matched: sampled tokens per path
    match_point: str | None = None  # compute_matched: the sweep point whose usage sets token_budget
    force_answer: bool = True
    segment_min_tokens: int = 0  # forbid EOS early in a segment (chat models without thinking)
    seed: int = 0

    def communicates(self, round_: int) -> bool:
        if self.mode in ("independent", "compute_matched") or round_ >= self.max_rounds:
            return False
        return self.comm_rounds is None or round_ in self.comm_rounds

    @property
    def uses_leap_note(self) -> bool:
        return self.mode == "leap"


@dataclass
class PathState:
    index: int
    key: str
    tokens: list[int]
    prompt_len: int
    synced: int = 0  # tokens[:synced] are on the replica exactly as here
    computed: int = 0  # leading tokens whose KV the replica has computed (for reuse stats)
    phase: str = "segment"
    round: int = 1
    in_flight: str | None = None  # kind of the request under way
    finish: str | None = None
    segment_start: int = 0
    summary_start: int = 0
    sampled_segments: int = 0
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    replica: int = -1
    node: str = ""

    def cut(self, n: int) -> None:
        """Keep the first n tokens; spans and sync state follow."""
        del self.tokens[n:]
        self.synced = min(self.synced, n)
        self.computed = min(self.computed, n)
        self.spans = [(k, s, min(e, n)) for k, s, e in self.spans if s < n]

    def append(self, ids: list[int], kind: str) -> None:
        if ids:
            self.spans.append((kind, len(self.tokens), len(self.tokens) + len(ids)))
            self.tokens.extend(ids)

    def count(self, injected: bool) -> int:
        return sum(e - s for k, s, e in self.spans if (k in INJECTED) == injected)


class Group:
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
        if params.mode not in MODES:
            raise ValueError(f"leap.mode must be one of {MODES}, got {params.mode!r}")
        self.key = key
        self.problem = problem
        self.params = params
        self.prompts = prompts
        self.tok = tokenizer
        self.sampling = sampling
        self.embed = embed
        self.sweep_point = sweep_point
        self.messages: list[dict] = []
        self.paths = [
            PathState(
                index=i,
                key=f"{key}/{i}",
                tokens=list(prompt_ids),
                prompt_len=len(prompt_ids),
                segment_start=len(prompt_ids),
            )
            for i in range(params.paths)
        ]
        self._by_key = {p.key: p for p in self.paths}

    # -- the plan ------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return all(p.phase == "done" for p in self.paths)

    def requests(self) -> list[GenRequest]:
        """Requests for every path that can advance now and has none under way."""
        out = []
        for p in self.paths:
            if p.in_flight is None and p.phase in ("segment", "summary", "answer", "force"):
                out.append(self._request(p))
                p.in_flight = p.phase
        return out

    def _request(self, p: PathState) -> GenRequest:
        prm = self.params
        stop: list[str] = []
        min_tokens = 0
        if p.phase == "segment":
            p.segment_start = len(p.tokens)
            max_tokens = prm.T
            if prm.token_budget is not None:
                max_tokens = min(max_tokens, prm.token_budget - p.sampled_segments)
            stop = [THINK_END]
            if prm.mode == "leap_t" and prm.communicates(p.round):
                stop.append(SUMMARY_OPEN)
            min_tokens = min(prm.segment_min_tokens, max_tokens)
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
            append=p.tokens[p.synced:],
            max_tokens=max(int(max_tokens), 1),
            stop=stop,
            sampling=SamplingSpec(
                self.sampling.temperature, self.sampling.top_p, self.sampling.top_k,
                self.sampling.min_p, seed,
            ),
            min_tokens=min_tokens,
            kind=p.phase,
        )

    def full_tokens(self, path_key: str) -> list[int]:
        """What a replica that lost (or never had) the path must be sent: its synced prefix."""
        p = self._by_key[path_key]
        return p.tokens[: p.synced]

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
        # The replica now holds our tokens plus the new ones, with KV for all but the last new
        # one; each handler appends `new` first and then edits (cuts move these marks back).
        base = len(p.tokens)
        p.synced = base + len(new)
        if new:
            p.computed = base + len(new) - 1
        getattr(self, f"_after_{kind}")(p, res, new)
        if any(q.phase == "barrier" for q in self.paths):
            self._maybe_release()

    def _after_segment(self, p: PathState, res: GenResult, new: list[int]) -> None:
        prm = self.params
        p.append(new, "segment")
        p.sampled_segments += len(new)
        if res.finish_reason in ("eos", "context"):
            return self._finish(p, res.finish_reason)
        if res.stop_str == THINK_END:
            if prm.answer_tokens > 0:
                p.phase = "answer"
                return None
            return self._finish(p, "think_end")
        if res.stop_str == SUMMARY_OPEN:  # LeaP-T: the model opened its own summary
            p.summary_start = len(p.tokens)
            p.phase = "summary"
            return None
        budget_left = prm.token_budget is None or p.sampled_segments < prm.token_budget
        last_round = p.round >= prm.max_rounds if prm.token_budget is None else not budget_left
        if last_round:
            return self._force(p)
        if prm.communicates(p.round):
            return self._start_summary(p)
        p.round += 1
        p.phase = "segment"
        return None

    def _start_summary(self, p: PathState) -> None:
        segment = p.tokens[p.segment_start:]
        keep = paragraph_cut(self.tok, segment)
        p.cut(p.segment_start + keep)
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
        keep, fix = repair_summary(self.tok, p.tokens[base:])
        p.cut(base + keep)
        if fix:
            p.append(self.tok.encode(fix), "summary_fix")
        p.summaries.append(extract_summary(self.tok.decode(p.tokens[p.summary_start:])))
        p.phase = "barrier"
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
        if any(q.phase in ("segment", "summary") for q in self.paths):
            return
        waiting = [q for q in self.paths if q.phase == "barrier"]
        if not waiting:
            return
        round_ = waiting[0].round
        prm = self.params
        summaries = [q.summaries[-1] for q in waiting]
        if len(waiting) == 1:
            routes: list[list[tuple[int, float]]] = [[]]
        else:
            rng = rng_for(prm.seed, self.problem.id, -1, round_, "router")
            routes = routing.route(summaries, prm.router, prm.top_k, rng=rng,
                                   similarity=prm.similarity, embed=self.embed)
        for q, peers in zip(waiting, routes):
            block = self.prompts.peer_block([summaries[j] for j, _ in peers])
            q.append(self.tok.encode(block), "comment")
            for rank, (j, sim) in enumerate(peers, start=1):
                self.messages.append({
                    "sweep_point": self.sweep_point,
                    "benchmark": self.problem.benchmark,
                    "problem_id": self.problem.id,
                    "round": round_,
                    "recipient": q.index,
                    "sender": waiting[j].index,
                    "rank": rank,
                    "similarity": round(float(sim), 6),
                    "summary": summaries[j],
                })
            q.round += 1
            q.phase = "segment"

    # -- results -------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """One row per path (the paths.parquet schema, minus the run's sweep columns)."""
        rows = []
        for p in self.paths:
            text = self.tok.decode(p.tokens[p.prompt_len:])
            graded = grade(strip_comments(text), self.problem.gold, kind=self.problem.kind)
            first = extract_answer(p.summaries[0]) if p.summaries and self.problem.kind == "math" else None
            changed = None
            if first is not None and graded["answer"] is not None:
                changed = canonical_answer(first) != canonical_answer(str(graded["answer"]))
            reqs = p.requests
            rows.append({
                "sweep_point": self.sweep_point,
                "benchmark": self.problem.benchmark,
                "problem_id": self.problem.id,
                "path": p.index,
                "gold": self.problem.gold,
                "answer": None if graded["answer"] is None else str(graded["answer"]),
                "correct": bool(graded["correct"]),
                "correct_compat": bool(graded["correct_compat"]),
                "finish_reason": p.finish or "unfinished",
                "rounds": p.round,
                "prompt_tokens": p.prompt_len,
                "sampled_tokens": p.count(injected=False),
                "injected_tokens": p.count(injected=True),
                "cached_tokens": sum(r["cached_tokens"] for r in reqs),
                "uncached_tokens": sum(r["prompt_tokens"] - r["cached_tokens"] for r in reqs),
                "summaries": list(p.summaries),
                "answer_first_summary": first,
                "answer_changed": changed,
                "replica": p.replica,
                "node": p.node,
                "text": text,
                "spans": [{"kind": k, "start": s - p.prompt_len, "end": e - p.prompt_len}
                          for k, s, e in p.spans],
                "requests": [dict(r) for r in reqs],
            })
        return rows

"""The result rows of a finished group: one per path (the paths.parquet schema, minus the run's
sweep columns), with each path's spans in token and character offsets; or, for a plan, only the
counts (`count_rows`)."""

from __future__ import annotations

from .confidence import lowest_window_confidence
from .grading import extract_answer
from .params import LeapParams
from .paths import PathState
from .types import Problem, Tokenizer


def path_rows(paths: list[PathState], problem: Problem, tok: Tokenizer, sweep_point: str,
              resumed_from_round: int | None, params: LeapParams | None = None) -> list[dict]:
    """One row per path; answers and verdicts are filled later by `grading.grade_record`."""
    params = params or LeapParams()
    rows = []
    for p in paths:
        text = tok.decode(p.tokens[p.prompt_len:].tolist())
        first = extract_answer(p.summaries[0]) if p.summaries and problem.kind == "math" else None
        reqs = p.requests
        rows.append({
            "sweep_point": sweep_point,
            "benchmark": problem.benchmark,
            "problem_id": problem.id,
            "path": p.index,
            "gold": problem.gold,
            "answer": None,  # filled by grading.grade_record, off the coordinator
            "correct": None,
            "correct_compat": None,
            "finish_reason": p.finish or "unfinished",
            "rounds": p.round,
            "prompt_tokens": p.prompt_len,
            "sampled_tokens": p.count(injected=False),
            "injected_tokens": p.count(injected=True),
            "cached_tokens": sum(r["cached_tokens"] for r in reqs),
            "uncached_tokens": sum(r["prompt_tokens"] - r["cached_tokens"] for r in reqs),
            "summaries": list(p.summaries),
            "answer_first_summary": first,
            "answer_changed": None,
            "replica": p.replica,
            "node": p.node,
            "text": text,
            "spans": span_rows(tok, p, text),
            "requests": [dict(r) for r in reqs],
            "resumed_from_round": resumed_from_round,
            **stop_columns(p, params),
            "probe_answers": list(p.probe_answers),
        })
    return rows


def stop_columns(p: PathState, params: LeapParams) -> dict:
    """How the path ended early, its answer probes' tokens, and its place in the vote."""
    rule = params.method.stopping
    probes = [r for r in p.requests if r["kind"] == "probe"]
    asked = rule.logprobs(params) > 0
    return {
        "stop_reason": p.stop_reason,
        "stopped_at_round": p.stopped_at_round,
        "probe_tokens": sum(r["new_tokens"] for r in probes),
        "probe_prompt_tokens": p.probe_injected,
        "warmup": rule.warmup(params, p),
        "confidence": lowest_window_confidence(p.confidences, params.confidence_window) if asked else None,
        "vote_weight": float(rule.vote_weight(params, p)),
        "vote": rule.vote,
    }


def count_rows(paths: list[PathState], problem: Problem, sweep_point: str,
               params: LeapParams | None = None) -> list[dict]:
    """The token counts of `path_rows`, without decoding any text: what a plan reads."""
    params = params or LeapParams()
    rows = []
    for p in paths:
        reqs = p.requests
        cached = sum(r["cached_tokens"] for r in reqs)
        rows.append({
            "sweep_point": sweep_point, "problem_id": problem.id, "path": p.index,
            "finish_reason": p.finish or "unfinished", "rounds": p.round, "prompt_tokens": p.prompt_len,
            "sampled_tokens": p.count(injected=False), "injected_tokens": p.count(injected=True),
            "cached_tokens": cached, "uncached_tokens": sum(r["prompt_tokens"] for r in reqs) - cached,
            "requests": len(reqs),
            **stop_columns(p, params),
        })
    return rows


def span_rows(tok: Tokenizer, p: PathState, text: str) -> list[dict]:
    """Spans in token offsets of the generated text, with character offsets into `text` when
    decoding span by span gives `text` back exactly (else null: a seam split a character,
    or the tokenizer does not decode piecewise)."""
    body_start = p.prompt_len
    rows, pieces = [], []
    pos = body_start
    for k, s, e in p.spans:
        if s > pos:  # not covered by a span (never, today): decode it to keep offsets right
            pieces.append(tok.decode(p.tokens[pos:s].tolist()))
        piece = tok.decode(p.tokens[s:e].tolist())
        pieces.append(piece)
        rows.append({"kind": k, "start": s - body_start, "end": e - body_start, "piece": len(pieces) - 1})
        pos = max(pos, e)
    if pos < len(p.tokens):
        pieces.append(tok.decode(p.tokens[pos:].tolist()))
    exact = "".join(pieces) == text
    offsets, acc = [], 0
    for piece in pieces:
        offsets.append(acc)
        acc += len(piece)
    for r in rows:
        i = r.pop("piece")
        r["char_start"] = offsets[i] if exact else None
        r["char_end"] = offsets[i] + len(pieces[i]) if exact else None
    return rows


def probe_cost(row) -> int:
    """The tokens of a path row's answer probes, sampled and sent (in neither `sampled_tokens`
    nor `injected_tokens`; 0 for rows without the columns)."""
    return int(row.get("probe_tokens") or 0) + int(row.get("probe_prompt_tokens") or 0)


def path_tokens(row) -> int:
    """Every token the engines did for a path row: sampled + injected + its answer probes'."""
    return int(row.get("sampled_tokens") or 0) + int(row.get("injected_tokens") or 0) + probe_cost(row)

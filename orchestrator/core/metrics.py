"""Evaluation metrics over graded paths (DESIGN.md section 1, "Metrics"). Pure functions.

Contract
--------
- `pass_at_k(n, c, k)`: the unbiased estimator 1 - C(n-c, k) / C(n, k) of the chance that at
  least one of k paths drawn without replacement from n (c of them correct) is correct, computed
  as the product 1 - prod_{i=n-c+1..n} (1 - k / i) so it never forms huge binomials.
- `majority_vote(answers, correct, lengths)`: Cons@N. Answers are grouped by
  `grading.canonical_answer` (normalized, "025" and "25" are one vote); None never wins and all
  None is incorrect. The plurality answer wins; ties go to the answer that occurs first.
  Shortest-majority is the same vote with ties broken in favour of the answer whose paths have
  the smallest mean length (then first occurrence). A winning answer's correctness is the
  `correct` flag of its first path.
- `summarize(rows)`: `{sweep_point: {benchmark: metrics}}` from per-path rows (see `summarize`).
  Within a problem, paths are ordered by their `path` index when rows carry one (so "first
  occurrence" in a vote means lowest path index); otherwise rows keep their input order.
- `per_problem(rows)`: one dict per (sweep_point, benchmark, problem_id).

Every float is rounded to 6 decimals and every mapping is built in sorted key order, so the
same rows always serialize to the same bytes whatever order they came in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Sequence

from orchestrator.core.grading import canonical_answer

logger = logging.getLogger(__name__)

DIGITS = 6


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), DIGITS)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for n samples with c correct (1 - C(n-c,k)/C(n,k))."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def k_values(n: int) -> list[int]:
    """The k reported for N paths: powers of two up to N, and N itself."""
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


# --------------------------------------------------------------------------- voting


def _vote_groups(answers: Sequence[str | None]) -> dict[str, list[int]]:
    """Path indices per canonical answer, in order of first occurrence; None dropped."""
    groups: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        key = canonical_answer(answer)
        if key is not None:
            groups.setdefault(key, []).append(i)
    return groups


def _winner(groups: dict[str, list[int]], lengths: Sequence[float], shortest: bool) -> str | None:
    """Most votes; ties by smallest mean length when `shortest`, then first occurrence."""
    if not groups:
        return None
    top = max(len(members) for members in groups.values())
    tied = [key for key, members in groups.items() if len(members) == top]
    if shortest:
        return min(tied, key=lambda key: _mean([lengths[i] for i in groups[key]]))
    return tied[0]


def majority_vote(
    answers: Sequence[str | None], correct: Sequence[bool], lengths: Sequence[int]
) -> dict:
    """Cons@N verdicts: {"answer", "votes", "correct", "shortest_answer", "shortest_correct"}."""
    if not len(answers) == len(correct) == len(lengths):
        raise ValueError("answers, correct and lengths must have the same length")
    groups = _vote_groups(answers)
    result = {}
    for prefix, shortest in (("", False), ("shortest_", True)):
        key = _winner(groups, lengths, shortest)
        result[f"{prefix}answer"] = key
        result[f"{prefix}correct"] = bool(correct[groups[key][0]]) if key is not None else False
    result["votes"] = len(groups[result["answer"]]) if result["answer"] is not None else 0
    return result


# --------------------------------------------------------------------------- summaries


def _group_key(row: dict) -> tuple[str, str]:
    return str(row["sweep_point"]), str(row["benchmark"])


def _problem_sort_key(pid) -> tuple:
    return (0, pid, "") if isinstance(pid, int) and not isinstance(pid, bool) else (1, 0, str(pid))


def _path_sort_key(row: dict) -> tuple:
    """Path-index order when rows carry `path`; rows without it keep their input order."""
    return _problem_sort_key(row["path"]) if row.get("path") is not None else (2, 0, "")


def _by_problem(rows: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """{(sweep_point, benchmark): {problem_id: [rows in path order]}}, keys sorted."""
    grouped: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[_group_key(row)][row["problem_id"]].append(row)
    return {
        key: {
            pid: sorted(grouped[key][pid], key=_path_sort_key)
            for pid in sorted(grouped[key], key=_problem_sort_key)
        }
        for key in sorted(grouped)
    }


def _problem_vote(paths: list[dict]) -> dict:
    return majority_vote(
        [p.get("answer") for p in paths],
        [bool(p["correct"]) for p in paths],
        [int(p.get("sampled_tokens") or 0) for p in paths],
    )


def _fraction_true(paths: list[dict], key: str) -> float:
    return sum(bool(p[key]) for p in paths) / len(paths)


def _pass_at_k_table(problems: dict, n: int) -> dict[int, float | None]:
    table = {}
    for k in k_values(n):
        values = [
            pass_at_k(len(paths), sum(bool(p["correct"]) for p in paths), k)
            for paths in problems.values()
        ]
        table[k] = _round(_mean(values))
    return table


def _token_means(paths: list[dict]) -> dict[str, float | None]:
    sampled = [int(p.get("sampled_tokens") or 0) for p in paths]
    injected = [int(p.get("injected_tokens") or 0) for p in paths]
    return {
        "sampled": _round(_mean(sampled)),
        "injected": _round(_mean(injected)),
        "total": _round(_mean([s + i for s, i in zip(sampled, injected)])),
    }


def _answer_changed_frac(paths: list[dict]) -> float | None:
    known = [bool(p["answer_changed"]) for p in paths if p.get("answer_changed") is not None]
    return _round(sum(known) / len(known)) if known else None


def _cache_hit_rate(paths: list[dict]) -> float | None:
    cached = sum(int(p.get("cached_tokens") or 0) for p in paths)
    uncached = sum(int(p.get("uncached_tokens") or 0) for p in paths)
    total = cached + uncached
    return _round(cached / total) if total else None


def _paths_per_problem(problems: dict, label: tuple[str, str]) -> int:
    counts = {len(paths) for paths in problems.values()}
    if len(counts) > 1:
        logger.warning("%s: uneven paths per problem %s; reporting the minimum", label, counts)
    return min(counts)


def _benchmark_metrics(problems: dict, label: tuple[str, str]) -> dict:
    """Metrics of one (sweep_point, benchmark) from its {problem_id: [path rows]}."""
    paths = [p for group in problems.values() for p in group]
    votes = [_problem_vote(group) for group in problems.values()]
    n = _paths_per_problem(problems, label)
    return {
        "problems": len(problems),
        "paths_per_problem": n,
        "pass@1": _round(_mean([_fraction_true(g, "correct") for g in problems.values()])),
        "pass@1_compat": _round(
            _mean([_fraction_true(g, "correct_compat") for g in problems.values()])
        ),
        "cons@N": _round(_mean([float(v["correct"]) for v in votes])),
        "cons@N_shortest": _round(_mean([float(v["shortest_correct"]) for v in votes])),
        "pass@k": _pass_at_k_table(problems, n),
        "tokens_per_path": _token_means(paths),
        "rounds_mean": _round(_mean([int(p.get("rounds") or 0) for p in paths])),
        "answer_changed_frac": _answer_changed_frac(paths),
        "prefix_cache_hit_rate": _cache_hit_rate(paths),
    }


def summarize(rows: Iterable[dict]) -> dict:
    """Metrics per sweep point and benchmark.

    Rows are per-path dicts with `benchmark`, `sweep_point`, `problem_id`, optional `path`
    (index, orders votes), `answer`, `correct`,
    `correct_compat`, `sampled_tokens`, `injected_tokens`, `rounds`, `answer_changed` (bool or
    None), `cached_tokens`, `uncached_tokens`. Per benchmark: `problems`, `paths_per_problem`
    (the minimum over problems), `pass@1` and `pass@1_compat` (mean over problems of the
    fraction of correct paths), `cons@N` and `cons@N_shortest` (majority vote, shortest-majority;
    path length = sampled tokens), `pass@k` ({k: mean unbiased estimate} for k in 1, 2, 4, ...
    up to N, plus N), `tokens_per_path` (means of sampled, injected and their sum),
    `rounds_mean`, `answer_changed_frac` (over paths where known, else None) and
    `prefix_cache_hit_rate` (cached / (cached + uncached), None when both are zero).
    """
    out: dict[str, dict] = {}
    for (sweep_point, benchmark), problems in _by_problem(rows).items():
        out.setdefault(sweep_point, {})[benchmark] = _benchmark_metrics(
            problems, (sweep_point, benchmark)
        )
    return out


def per_problem(rows: Iterable[dict]) -> list[dict]:
    """One dict per (sweep_point, benchmark, problem_id): n, pass@1, pass@1_compat, cons@N."""
    out = []
    for (sweep_point, benchmark), problems in _by_problem(rows).items():
        for pid, paths in problems.items():
            vote = _problem_vote(paths)
            out.append(
                {
                    "sweep_point": sweep_point,
                    "benchmark": benchmark,
                    "problem_id": pid,
                    "n": len(paths),
                    "pass@1": _round(_fraction_true(paths, "correct")),
                    "pass@1_compat": _round(_fraction_true(paths, "correct_compat")),
                    "cons@N": _round(float(vote["correct"])),
                    "majority_answer": vote["answer"],
                }
            )
    return out


__all__ = ["k_values", "majority_vote", "pass_at_k", "per_problem", "summarize"]

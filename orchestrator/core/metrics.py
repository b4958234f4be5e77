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
  `correct` flag of its first graded path; None when none of its paths is graded.
- Ungraded paths (`correct` None: the check timed out, or grading could not finish) are never
  counted as wrong: Pass@1 and pass@k are over a problem's graded paths, a problem with none is
  left out of the benchmark's means, and a problem whose vote cannot be graded is left out of
  Cons@N. The counts say so: `ungraded` (paths) and `ungraded_votes` (problems) per benchmark,
  `ungraded` per problem and per round of `round_transitions`; each is present only when not
  zero, so a run where everything was graded writes the same summary.json as before.
- `summarize(rows)`: `{sweep_point: {benchmark: metrics}}` from per-path rows (see `summarize`).
  Within a problem, paths are ordered by their `path` index when rows carry one (so "first
  occurrence" in a vote means lowest path index); otherwise rows keep their input order.
- `per_problem(rows)`: one dict per (sweep_point, benchmark, problem_id).
- `round_transitions(paths, comm_rounds=None)`: per communication round, how many paths changed
  their answer after reading peer messages (wrong to right, right to wrong, wrong to another
  wrong, right to another right), and how many without an answer then found one (`ungraded`,
  when not zero: exchanges left unsorted because a verdict before or after is undecided). A
  path's checkpoints are its round answers (`round_answers` / `round_correct`: the answer in the
  summary it wrote at each communication round, before it saw its peers) followed by its final
  graded answer; exchange i moves checkpoint i to i + 1.
- `compare_points(summary, settings)`: per point and benchmark, Pass@1 and Cons@N deltas against
  the independent baseline and the compute-matched point of a LeaP point (`summarize(rows,
  points)` stores them in the summary, beside each point's settings).

Every float is rounded to 6 decimals and every mapping is built in sorted key order, so the
same rows always serialize to the same bytes whatever order they came in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Sequence

from orchestrator.core import votes as voting_rules
from orchestrator.core.grading import canonical_answer
from orchestrator.core.methods import find_method
from orchestrator.core.params import OPTIONAL_DEFAULTS, OPTIONAL_KEYS
from orchestrator.core.rows import probe_cost

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


def _group_verdict(members: list[int], correct: Sequence[bool | None]) -> bool | None:
    """The verdict of the first graded path among `members`; None when none is graded."""
    return next((bool(correct[i]) for i in members if correct[i] is not None), None)


def majority_vote(
    answers: Sequence[str | None], correct: Sequence[bool | None], lengths: Sequence[int]
) -> dict:
    """Cons@N verdicts: {"answer", "votes", "correct", "shortest_answer", "shortest_correct"};
    a verdict is None when no path with the winning answer is graded."""
    if not len(answers) == len(correct) == len(lengths):
        raise ValueError("answers, correct and lengths must have the same length")
    groups = _vote_groups(answers)
    result = {}
    for prefix, shortest in (("", False), ("shortest_", True)):
        key = _winner(groups, lengths, shortest)
        result[f"{prefix}answer"] = key
        result[f"{prefix}correct"] = _group_verdict(groups[key], correct) if key is not None else False
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
    """The problem's vote (`votes`: paths stopped for low confidence left out; a confidence
    point's winner weighted by confidence, its shortest-majority the same answer); with no
    answer to vote for while some path is ungraded (whose answer may be unknown), undecided
    rather than wrong."""
    voting = voting_rules.voters(paths)
    vote = majority_vote(
        [p.get("answer") for p in voting],
        [None if p["correct"] is None else bool(p["correct"]) for p in voting],
        [int(p.get("sampled_tokens") or 0) for p in voting],
    )
    if voting_rules.vote_kind(paths) == voting_rules.CONFIDENCE:
        key = voting_rules.weighted_winner(voting)
        members = [i for i, p in enumerate(voting) if key is not None and canonical_answer(p.get("answer")) == key]
        verdict = _group_verdict(members, [p["correct"] for p in voting]) if members else False
        vote.update(answer=key, correct=verdict, shortest_answer=key, shortest_correct=verdict, votes=len(members))
    if vote["answer"] is None and _ungraded(paths):
        vote.update(correct=None, shortest_correct=None)
    return vote


def _fraction_true(paths: list[dict], key: str) -> float | None:
    """The fraction of graded paths (`key` not None) that are right; None when none is graded."""
    graded = [bool(p[key]) for p in paths if p[key] is not None]
    return sum(graded) / len(graded) if graded else None


def _decided(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _ungraded(paths: list[dict]) -> int:
    return sum(p["correct"] is None for p in paths)


def _pass_at_k_table(problems: dict, n: int) -> dict[int, float | None]:
    """Mean unbiased pass@k over the problems with at least k graded paths."""
    graded = [[bool(p["correct"]) for p in paths if p["correct"] is not None] for paths in problems.values()]
    table = {}
    for k in k_values(n):
        values = [pass_at_k(len(g), sum(g), k) for g in graded if len(g) >= k]
        table[k] = _round(_mean(values))
    return table


def _token_means(paths: list[dict]) -> dict[str, float | None]:
    """Means per path of sampled, injected and all tokens; `probe` (answer probes' sampled and
    sent tokens, counted in the total) only where some path probed."""
    sampled = [int(p.get("sampled_tokens") or 0) for p in paths]
    injected = [int(p.get("injected_tokens") or 0) for p in paths]
    probes = [probe_cost(p) for p in paths]
    out = {
        "sampled": _round(_mean(sampled)),
        "injected": _round(_mean(injected)),
        "total": _round(_mean([s + i + b for s, i, b in zip(sampled, injected, probes)])),
    }
    if any(probes):
        out["probe"] = _round(_mean(probes))
    return out


def _answer_changed_frac(paths: list[dict]) -> float | None:
    known = [bool(p["answer_changed"]) for p in paths if p.get("answer_changed") is not None]
    return _round(sum(known) / len(known)) if known else None


def cache_hit_rate(paths: Iterable[dict]) -> float | None:
    """Prompt tokens served from the prefix cache over all prompt tokens of these paths."""
    paths = list(paths)
    cached = sum(int(p.get("cached_tokens") or 0) for p in paths)
    uncached = sum(int(p.get("uncached_tokens") or 0) for p in paths)
    total = cached + uncached
    return _round(cached / total) if total else None


def _paths_per_problem(problems: dict, label: tuple[str, str]) -> int:
    counts = {len(paths) for paths in problems.values()}
    if len(counts) > 1:
        logger.warning("%s: uneven paths per problem %s; reporting the minimum", label, counts)
    return min(counts)


def _problem_details(problems: dict) -> dict[str, dict]:
    """{problem_id (str): paths, pass@1, cons@N, majority answer and its votes}."""
    out = {}
    for pid, paths in problems.items():
        vote = _problem_vote(paths)
        out[str(pid)] = {
            "paths": len(paths),
            "pass@1": _round(_fraction_true(paths, "correct")),
            "cons@N": _round(vote["correct"]),
            "majority_answer": vote["answer"],
            "votes": vote["votes"],
        }
        if _ungraded(paths):
            out[str(pid)]["ungraded"] = _ungraded(paths)
    return out


# --------------------------------------------------------------------------- per-round answers

TRANSITIONS = ("wrong_to_right", "right_to_wrong", "wrong_to_wrong", "right_to_right")
GAINED = ("no_answer_to_right", "no_answer_to_wrong")


def _transition(before: tuple, after: tuple) -> str | None:
    """The kind of change from one (answer, correct) checkpoint to the next; None: unchanged.
    From an answer, a change is a different voting key (no answer included) or verdict; from no
    answer, finding one is `no_answer_to_*` (not a change of answer)."""
    (a, ok_a), (b, ok_b) = before, after
    key_a, key_b = canonical_answer(a), canonical_answer(b)
    if key_a is None:
        return None if key_b is None else f"no_answer_to_{'right' if ok_b else 'wrong'}"
    if key_a == key_b and bool(ok_a) == bool(ok_b):
        return None
    return f"{'right' if ok_a else 'wrong'}_to_{'right' if ok_b else 'wrong'}"


def round_transitions(paths: Iterable[dict], comm_rounds: Sequence[int] | None = None) -> dict | None:
    """{round: {"paths", "answered", "changed", *TRANSITIONS, *GAINED}} over the paths that wrote
    a summary in that round: `answered` had an answer in it, `changed` (of those) moved to
    another answer or verdict by the next checkpoint, split by verdicts before and after;
    `no_answer_to_*` had none and then found one; `ungraded` (only when not zero) could not be
    sorted because a verdict before or after was undecided. Rounds are the communicating rounds
    (`comm_rounds`, in order) when given, else 1, 2, ... by summary index. None when the rows
    carry summaries but no `round_answers` (not graded per round); {} when no path
    communicated."""
    paths = list(paths)
    if any(p.get("summaries") and p.get("round_answers") is None for p in paths):
        return None
    table: dict[int, dict[str, int]] = {}
    for p in paths:
        answers = list(p.get("round_answers") or [])
        verdicts = list(p.get("round_correct") or [])
        if len(verdicts) != len(answers):
            raise ValueError(f"path {p.get('problem_id')}/{p.get('path')}: round_answers and "
                             f"round_correct differ in length")
        points = list(zip(answers, verdicts)) + [(p.get("answer"), p.get("correct"))]
        for i in range(len(answers)):
            label = comm_rounds[i] if comm_rounds is not None and i < len(comm_rounds) else i + 1
            counts = table.setdefault(label, {"paths": 0, "answered": 0, "changed": 0,
                                              **dict.fromkeys(TRANSITIONS + GAINED, 0)})
            counts["paths"] += 1
            counts["answered"] += canonical_answer(points[i][0]) is not None
            if points[i][1] is None or points[i + 1][1] is None:  # a verdict is undecided
                counts["ungraded"] = counts.get("ungraded", 0) + 1
                continue
            kind = _transition(points[i], points[i + 1])
            if kind is not None:
                counts["changed"] += kind in TRANSITIONS
                counts[kind] += 1
    return {r: table[r] for r in sorted(table)}


# --------------------------------------------------------------------------- sweep settings

SETTING_KEYS = ("mode", "paths", "T", "max_rounds", "top_k", "router", "similarity",
                "comm_rounds", "token_budget", "match_point")
BASELINES = ("independent", "compute_matched")  # the baselines a method can be, in report order


def is_leap_mode(mode, stopping=None) -> bool:
    """Whether `mode` (with `leap.stopping`) is a LeaP point in the tables: a registered method
    whose paths hear from peers."""
    found = find_method(mode, stopping)
    return found is not None and found.exchanges


def baseline_of(mode, stopping=None) -> str | None:
    """The baseline (one of `BASELINES`) that `mode` is, or None (also when `leap.stopping`
    gives it another stopping rule than its own)."""
    found = find_method(mode, stopping)
    return found.baseline if found is not None else None


def _get(obj, key: str):
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def point_settings(params) -> dict:
    """The facts of a sweep point a report needs, from its LeapParams (or a mapping of them);
    the knobs of `params.OPTIONAL_KEYS` only where they differ from their defaults."""
    out = {}
    for key in SETTING_KEYS:
        value = _get(params, key)
        out[key] = list(value) if isinstance(value, tuple) else value
    for key in OPTIONAL_KEYS:
        value = _get(params, key)
        if value is not None and value != OPTIONAL_DEFAULTS[key]:
            out[key] = value
    return out


def comm_round_list(settings: dict) -> list[int]:
    """The rounds in which paths of this point exchange summaries (DESIGN.md section 1)."""
    if not is_leap_mode(settings.get("mode"), settings.get("stopping")) or not settings.get("max_rounds"):
        return []
    last = int(settings["max_rounds"])
    chosen = settings.get("comm_rounds")
    return [r for r in range(1, last) if chosen is None or r in chosen]


def _baselines(settings: dict[str, dict]) -> tuple[str | None, dict[str, str]]:
    """(the independent point, {LeaP point: its compute-matched point})."""
    names = sorted(settings)
    role = {n: baseline_of(settings[n].get("mode"), settings[n].get("stopping")) for n in names}
    independent = next((n for n in names if role[n] == "independent"), None)
    matched = [n for n in names if role[n] == "compute_matched"]
    unlinked = [n for n in matched if not settings[n].get("match_point")]
    pairs = {}
    for n in names:
        if not is_leap_mode(settings[n].get("mode"), settings[n].get("stopping")):
            continue
        linked = [m for m in matched if settings[m].get("match_point") == n]
        if linked:
            pairs[n] = linked[0]
        elif len(unlinked) == 1:
            pairs[n] = unlinked[0]
    return independent, pairs


def _delta(point: dict, base: dict, base_name: str) -> dict:
    out: dict = {"point": base_name}
    for key in ("pass@1", "cons@N"):
        a, b = point.get(key), base.get(key)
        out[key] = None if a is None or b is None else _round(a - b)
    return out


def compare_points(summary: dict, settings: dict[str, dict]) -> dict:
    """{point: {benchmark: {"vs_independent": {...}, "vs_compute_matched": {...}}}}: Pass@1 and
    Cons@N of the point minus those of its baseline (and the baseline's name), where it has one."""
    independent, matched = _baselines({k: v for k, v in settings.items() if k in summary})
    out: dict = {}
    for point in sorted(summary):
        for bench, m in sorted(summary[point].items()):
            entry = {}
            if independent is not None and point != independent and bench in summary[independent]:
                entry["vs_independent"] = _delta(m, summary[independent][bench], independent)
            cm = matched.get(point)
            if cm is not None and bench in summary[cm]:
                entry["vs_compute_matched"] = _delta(m, summary[cm][bench], cm)
            if entry:
                out.setdefault(point, {})[bench] = entry
    return out


def _benchmark_metrics(problems: dict, label: tuple[str, str], settings: dict | None = None) -> dict:
    """Metrics of one (sweep_point, benchmark) from its {problem_id: [path rows]}."""
    paths = [p for group in problems.values() for p in group]
    votes = [_problem_vote(group) for group in problems.values()]
    n = _paths_per_problem(problems, label)
    rounds = comm_round_list(settings) if settings is not None else None
    out = {
        "problems": len(problems),
        "paths_per_problem": n,
        "pass@1": _round(_mean(_decided(_fraction_true(g, "correct") for g in problems.values()))),
        "pass@1_compat": _round(
            _mean(_decided(_fraction_true(g, "correct_compat") for g in problems.values()))
        ),
        "cons@N": _round(_mean(_decided(v["correct"] for v in votes))),
        "cons@N_shortest": _round(_mean(_decided(v["shortest_correct"] for v in votes))),
        "pass@k": _pass_at_k_table(problems, n),
        "tokens_per_path": _token_means(paths),
        "rounds_mean": _round(_mean([int(p.get("rounds") or 0) for p in paths])),
        "answer_changed_frac": _answer_changed_frac(paths),
        "prefix_cache_hit_rate": cache_hit_rate(paths),
        "round_transitions": round_transitions(paths, rounds or None),
        "per_problem": _problem_details(problems),
    }
    if any(p.get("vote") is not None for p in paths):  # rows from before the column: left out
        out["vote"] = voting_rules.vote_kind(paths)
    if _ungraded(paths):  # shown apart; absent when every path was graded
        out["ungraded"] = _ungraded(paths)
    undecided = sum(v["correct"] is None for v in votes)
    if undecided:
        out["ungraded_votes"] = undecided
    return out


def summarize(rows: Iterable[dict], points: dict | None = None) -> dict:
    """Metrics per sweep point and benchmark.

    Rows are per-path dicts with `benchmark`, `sweep_point`, `problem_id`, optional `path`
    (index, orders votes), `answer`, `correct`,
    `correct_compat`, `sampled_tokens`, `injected_tokens`, `rounds`, `answer_changed` (bool or
    None), `cached_tokens`, `uncached_tokens`. Per benchmark: `problems`, `paths_per_problem`
    (the minimum over problems), `pass@1` and `pass@1_compat` (mean over problems of the
    fraction of correct paths), `cons@N` and `cons@N_shortest` (majority vote, shortest-majority;
    path length = sampled tokens), `pass@k` ({k: mean unbiased estimate} for k in 1, 2, 4, ...
    up to N, plus N), `tokens_per_path` (means of sampled, injected, answer probes' tokens where
    any, and their sum), `vote` (majority, or confidence: see `votes`; where rows say),
    `rounds_mean`, `answer_changed_frac` (over paths where known, else None) and
    `prefix_cache_hit_rate` (cached / (cached + uncached), None when both are zero),
    `round_transitions` (see `round_transitions`; rows need `summaries`, `round_answers` and
    `round_correct`) and `per_problem` ({problem_id: paths, pass@1, cons@N, majority_answer,
    votes}). Ungraded paths (`correct` None) are left out of every accuracy and counted apart:
    `ungraded` (paths) and `ungraded_votes` (problems whose vote could not be graded), present
    only when not zero (see the module docstring).

    `points` ({sweep_point: LeapParams or a mapping of its fields}, optional) adds `settings`
    (mode, T, top_k, router, ...) to each benchmark's metrics, labels round transitions by the
    point's communicating rounds, and adds `vs_independent` / `vs_compute_matched` deltas
    (see `compare_points`).
    """
    settings = {name: point_settings(p) for name, p in (points or {}).items()}
    out: dict[str, dict] = {}
    for (sweep_point, benchmark), problems in _by_problem(rows).items():
        out.setdefault(sweep_point, {})[benchmark] = _benchmark_metrics(
            problems, (sweep_point, benchmark), settings.get(sweep_point)
        )
    if settings:
        for point, per_bench in out.items():
            for bench, m in per_bench.items():
                if point in settings:
                    m["settings"] = dict(sorted(settings[point].items()))
        for point, per_bench in compare_points(out, settings).items():
            for bench, deltas in per_bench.items():
                out[point][bench].update(deltas)
    return out


def per_problem(rows: Iterable[dict]) -> list[dict]:
    """One dict per (sweep_point, benchmark, problem_id): n, ungraded, pass@1, pass@1_compat
    (over graded paths), cons@N (None when the vote cannot be graded)."""
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
                    "ungraded": _ungraded(paths),
                    "pass@1": _round(_fraction_true(paths, "correct")),
                    "pass@1_compat": _round(_fraction_true(paths, "correct_compat")),
                    "cons@N": _round(vote["correct"]),
                    "majority_answer": vote["answer"],
                }
            )
    return out


__all__ = [
    "GAINED",
    "TRANSITIONS",
    "comm_round_list",
    "cache_hit_rate",
    "compare_points",
    "k_values",
    "majority_vote",
    "pass_at_k",
    "per_problem",
    "point_settings",
    "round_transitions",
    "summarize",
]

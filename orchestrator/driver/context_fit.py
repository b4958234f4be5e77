"""Every problem must fit in engine.max_model_len: checked with the model's tokenizer, in one pass
over the groups to run, before Ray or any engine starts.

A problem whose prompt leaves no room for one round of LeaP (a segment of leap.T tokens, the
summary, the peer notes: `core.budget.first_round`) is refused, naming the dataset file, the
row and the problem id, its token count, the limit and the keys to change; otherwise its paths
would end with finish_reason=context and be graded wrong, having generated nothing, or nothing
after their first segment. A prompt that only cuts the whole budget short (leap.T x
leap.max_rounds and what is injected, `config.path_budget`) is a warning, as the same shortfall
without the prompt already is (`config.setting_warnings`).
"""

from __future__ import annotations

import logging

from ..config import Config, path_budget
from ..core.budget import FirstRound, first_round
from ..core.params import LeapParams
from ..core.prompts import PromptSet
from ..core.types import Problem
from ..engines import tokenizer
from .data import DatasetError

log = logging.getLogger(__name__)


def check_context(cfg: Config, points: dict[str, LeapParams], prompts: PromptSet,
                  todo: list[tuple[str, Problem]], problems: list[Problem], model: str) -> list[str]:
    """Refuse (`DatasetError`) the run when a problem of `todo` (sweep point, problem) cannot
    hold its first round; returns the warnings logged. `model` is the tokenizer to count with
    (`fake`, or a checkpoint directory or hub id); one that does not load here skips the check."""
    max_len = cfg.engine.max_model_len
    if not max_len or not todo:
        return []
    try:
        tok = tokenizer.load_tokenizer(model)
    # a tokenizer that does not load here (no network, an odd checkpoint; transformers raises
    # OSError, ValueError, ImportError and its own errors) only skips this check: the coordinator
    # loads it again, and reports what it finds
    except Exception as exc:
        message = (f"the problems' lengths were not checked against engine.max_model_len: the tokenizer of "
                   f"{model} does not load here ({type(exc).__name__}: {exc})")
        log.warning("%s", message)
        return [message]
    rows = {p.id: i for i, p in enumerate(problems)}
    prompt_len: dict[tuple[str, bool], int] = {}
    rounds: dict[tuple[str, str], FirstRound] = {}
    too_long: dict[str, tuple] = {}  # problem id -> its worst (excess, point, problem, tokens, round)
    longest: dict[str, tuple[int, Problem]] = {}  # sweep point -> its longest prompt
    over: dict[str, int] = {}  # sweep point -> problems whose prompt cuts the whole budget short
    for point, problem in todo:
        params = points[point]
        key = (problem.id, params.uses_leap_note)
        if key not in prompt_len:
            prompt_len[key] = len(tokenizer.render_prompt(tok, prompts, problem, params))
        tokens = prompt_len[key]
        if (point, problem.kind) not in rounds:
            rounds[point, problem.kind] = first_round(params, prompts, tok, problem.kind)
        need = rounds[point, problem.kind]
        excess = tokens + need.total - max_len
        if excess > 0 and excess > too_long.get(problem.id, (0,))[0]:
            too_long[problem.id] = (excess, point, problem, tokens, need)
        if tokens > longest.get(point, (-1, None))[0]:
            longest[point] = (tokens, problem)
        budget = path_budget(params)
        if budget is not None and tokens + budget[0] + budget[1] > max_len:
            over[point] = over.get(point, 0) + 1
    if too_long:
        raise DatasetError(_refusal(cfg, list(too_long.values()), rows, len(points)))
    warnings = _budget_warnings(cfg, points, longest, over, rows, len({p.id for _, p in todo}))
    for message in warnings:
        log.warning("%s", message)
    return warnings


def _source(cfg: Config) -> str:
    if cfg.dataset.path:
        return str(cfg.dataset.path)
    return f"dataset {cfg.dataset.name}" + (f" (hub {cfg.dataset.hub_id})" if cfg.dataset.hub_id else "")


def _refusal(cfg: Config, found: list[tuple], rows: dict[str, int], n_points: int) -> str:
    max_len = cfg.engine.max_model_len
    found.sort(key=lambda f: rows.get(f[2].id, -1))
    excess, point, problem, tokens, need = max(found, key=lambda f: f[0])
    parts = [f"{need.segment} for a segment (leap.T)"]
    if need.summary:
        parts.append(f"{need.summary} for the summary and its prompt (leap.summary_tokens)")
    if need.peers:
        parts.append(f"{need.peers} for {need.k} peer summaries (leap.top_k)" if need.k
                     else f"{need.peers} for the no-comments block")
    if need.ending:
        parts.append(f"{need.ending} for the answer-forcing suffix and the answer (leap.summary_tokens)")
    at = f" at sweep point {point}" if n_points > 1 else ""
    what = ("so its paths end before they generate anything" if tokens >= max_len else
            "so its paths end with finish_reason=context before their first round is over")
    text = (f"{_source(cfg)}: row {rows.get(problem.id, '?')} (problem {problem.id}) does not fit in "
            f"engine.max_model_len={max_len}{at}: its prompt is {tokens} tokens and its first round can add "
            f"{need.total} more ({', '.join(parts)}), {tokens + need.total} in all, {what}.")
    others = [f for f in found if f[2].id != problem.id]
    if others:
        listed = ", ".join(f"row {rows.get(f[2].id, '?')} (problem {f[2].id}, {f[3]} tokens)" for f in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        text += f" {len(others)} more problem(s) do not fit either: {listed}{more}."
    first_row = min(rows.get(f[2].id, 0) for f in found)
    leave_out = f"dataset.limit={first_row} keeps only the rows before row {first_row}; or remove those rows" \
        if first_row > 0 else "remove those rows"
    text += (f" Raise engine.max_model_len (to at least {max(f[3] + f[4].total for f in found)}), lower leap.T, "
             f"leap.summary_tokens or leap.top_k, or leave these problems out ({leave_out}).")
    return text


def _budget_warnings(cfg: Config, points: dict[str, LeapParams], longest: dict, over: dict[str, int],
                     rows: dict[str, int], n_problems: int) -> list[str]:
    """One warning for the worst sweep point whose whole budget the prompts cut short, when the
    budget alone fits (`config.setting_warnings` already names it otherwise)."""
    max_len = cfg.engine.max_model_len
    worst = None
    for point, count in over.items():
        sampled, injected, _ = path_budget(points[point])
        if sampled + injected > max_len:
            continue
        tokens, problem = longest[point]
        short = tokens + sampled + injected - max_len
        if worst is None or short > worst[0]:
            worst = (short, point, count, tokens, problem, sampled, injected)
    if worst is None:
        return []
    _, point, count, tokens, problem, sampled, injected = worst
    at = f" (sweep point {point})" if len(points) > 1 else ""
    what = points[point].method.stopping.budget_keys
    return [f"engine.max_model_len={max_len} may be too short for {count} of {n_problems} problem(s){at}: "
            f"{sampled} sampled tokens ({what}) plus up to {injected} injected plus the prompt "
            f"(up to {tokens} tokens: row {rows.get(problem.id, '?')}, problem {problem.id}) can exceed it; a path "
            f"that reaches it stops with finish_reason=context"]

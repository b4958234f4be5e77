"""A problem too long for engine.max_model_len is refused before Ray starts, naming the file,
row, id, token count, limit and keys; the first-round estimate holds what a path really appends."""

import json
import logging

import pytest

from orchestrator.driver.cluster import Cluster
from orchestrator.config import prompt_file, sweep_points
from orchestrator.driver.context_fit import check_context
from orchestrator.core.budget import first_round
from orchestrator.core.group import Group
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import GenResult, Problem
from orchestrator.driver.data import DatasetError, load_problems
from orchestrator.engines.tokenizer import FakeTokenizer, render_prompt
from orchestrator.errors import exit_code
from tests.conftest import compose

TOK = FakeTokenizer()
PROMPTS = load_prompts(prompt_file("default"))
PROBLEM = Problem(id="p", benchmark="unit", question="What is 2+3?", gold="5")


def worst_first_round(params: LeapParams) -> list[int]:
    """Drive a group through round 1 with every request using its whole budget (segments with no
    paragraph break, so nothing is cut; summaries that never close, so they are repaired); returns
    what each path appended to its prompt by the time round 2 starts."""
    prompt = render_prompt(TOK, PROMPTS, PROBLEM, params)
    group = Group("k", PROBLEM, prompt, params, PROMPTS, TOK)
    while True:
        requests = group.requests()
        if all(r.kind == "segment" and group._by_key[r.path_key].round == 2 for r in requests):
            break
        for r in requests:
            text = ("x" if r.kind == "segment" else "y") * r.max_tokens
            group.on_result(GenResult(r.path_key, TOK.encode(text), text, "length"))
    return [len(p.tokens) - len(prompt) for p in group.paths]


@pytest.mark.parametrize("paths, top_k", [(4, 2), (5, -1), (3, 8)])
def test_first_round_estimate_holds_what_a_path_appends(paths, top_k):
    params = LeapParams(paths=paths, T=300, max_rounds=3, top_k=top_k, summary_tokens=40)
    need = first_round(params, PROMPTS, TOK)
    appended = worst_first_round(params)
    assert need.k == (paths - 1 if top_k == -1 else min(top_k, paths - 1))
    assert need.segment == 300 and need.summary > 40 and need.peers > need.k * 40
    # the estimate covers the longest path, and is not far above it (a few tokens per summary)
    assert max(appended) <= need.total <= max(appended) + 30 * (need.k + 1)


def test_first_round_of_other_shapes():
    alone = first_round(LeapParams(paths=1, T=100, max_rounds=2), PROMPTS, TOK)
    assert alone.k == 0 and alone.peers == len(TOK.encode(PROMPTS.no_comments))
    plain = first_round(LeapParams(paths=4, T=100, max_rounds=3, mode="independent"), PROMPTS, TOK)
    assert plain.total == plain.segment == 100  # no summary, no peers, not the last round
    single = first_round(LeapParams(paths=4, T=100, max_rounds=1, summary_tokens=20), PROMPTS, TOK)
    assert single.summary == single.peers == 0
    assert single.ending == len(TOK.encode(PROMPTS.forcing("math"))) + 20
    matched = first_round(LeapParams(paths=4, T=100, max_rounds=3, mode="compute_matched", token_budget=60),
                          PROMPTS, TOK)
    assert matched.segment == 60 and matched.ending > 0


def write_dataset(tmp_path, questions):
    path = tmp_path / "probs.json"
    path.write_text(json.dumps([{"id": f"q{i}", "problem": q, "answer": "1"} for i, q in enumerate(questions)]))
    return path


BASE = ["engine=fake", "dataset=aime24", "leap.paths=4", "leap.T=200", "leap.max_rounds=3", "leap.top_k=2",
        "leap.summary_tokens=40", "progress=false", "plots=false"]


def setup(tmp_path, questions, *extra):
    data = write_dataset(tmp_path, questions)
    cfg = compose(BASE + [f"dataset.path={data}", f"output_dir={tmp_path / 'out'}", *extra])
    problems = load_problems("aime24", path=str(data))
    points = sweep_points(cfg)
    todo = [(pt, pb) for pt in points for pb in problems]
    return cfg, points, problems, todo, data


def test_a_too_long_problem_is_refused_naming_file_row_tokens_limit_and_keys(tmp_path):
    short, long_ = "What is 1+1?", "Count the words. " + "word " * 400
    cfg, points, problems, todo, data = setup(tmp_path, [short, short, long_, short, long_],
                                              "engine.max_model_len=1700")
    with pytest.raises(DatasetError) as err:
        check_context(cfg, points, PROMPTS, todo, problems, "fake")
    msg = str(err.value)
    params = next(iter(points.values()))
    tokens = len(render_prompt(TOK, PROMPTS, problems[2], params))
    need = first_round(params, PROMPTS, TOK)
    assert msg.startswith(f"{data}: row 2 (problem q2) does not fit in engine.max_model_len=1700"), msg
    assert f"its prompt is {tokens} tokens" in msg and f"can add {need.total} more" in msg
    assert "1 more problem(s) do not fit either: row 4 (problem q4" in msg
    for key in ("leap.T", "leap.summary_tokens", "leap.top_k", "dataset.limit=2"):
        assert key in msg
    assert f"at least {tokens + need.total}" in msg
    assert exit_code(err.value) == 2


def test_problems_that_fit_pass_and_a_prompt_that_cuts_the_budget_short_is_a_warning(tmp_path, caplog):
    # the budget alone, 3 x 200 sampled + 2 x (40 x 3 + 96) + 96 + 1024 injected = 2152, fits; with
    # the prompts (909 and 1404 bytes) only the first problem's whole budget does
    cfg, points, problems, todo, _ = setup(tmp_path, ["What is 1+1?", "Count. " + "word " * 100],
                                           "engine.max_model_len=3200")
    with caplog.at_level(logging.WARNING, logger="orchestrator.driver.context_fit"):
        warnings = check_context(cfg, points, PROMPTS, todo, problems, "fake")
    assert len(warnings) == 1 and warnings[0] in caplog.text
    assert "may be too short for 1 of 2 problem(s)" in warnings[0] and "problem q1" in warnings[0]
    roomy, points, problems, todo, _ = setup(tmp_path, ["What is 1+1?"], "engine.max_model_len=20000")
    assert check_context(roomy, points, PROMPTS, todo, problems, "fake") == []


def test_only_the_groups_left_to_run_are_checked(tmp_path):
    cfg, points, problems, todo, _ = setup(tmp_path, ["What is 1+1?", "word " * 600], "engine.max_model_len=1700")
    with pytest.raises(DatasetError):
        check_context(cfg, points, PROMPTS, todo, problems, "fake")
    assert check_context(cfg, points, PROMPTS, todo[:1], problems, "fake") == []  # row 1 is done already


def test_a_sweep_names_the_point_that_does_not_fit(tmp_path):
    cfg, points, problems, todo, _ = setup(tmp_path, ["word " * 150], "engine.max_model_len=2600",
                                           "+sweep=[{name: small, T: 100}, {name: big, T: 900}]")
    with pytest.raises(DatasetError, match="at sweep point big"):
        check_context(cfg, points, PROMPTS, todo, problems, "fake")


def test_a_tokenizer_that_does_not_load_skips_the_check_with_a_warning(tmp_path, monkeypatch):
    from orchestrator.engines import tokenizer

    def unreachable(spec):
        raise OSError(f"{spec}: the hub is unreachable")

    monkeypatch.setattr(tokenizer, "load_tokenizer", unreachable)
    cfg, points, problems, todo, _ = setup(tmp_path, ["word " * 600], "engine.max_model_len=1600")
    warnings = check_context(cfg, points, PROMPTS, todo, problems, "org/model")
    assert len(warnings) == 1 and "were not checked" in warnings[0] and "org/model: the hub" in warnings[0]


def test_the_run_refuses_a_too_long_problem_before_ray_starts(tmp_path, monkeypatch):
    from orchestrator.driver.runner import run

    started = []
    monkeypatch.setattr(Cluster, "start", lambda cfg: started.append(cfg) or pytest.fail("Ray started"))
    data = write_dataset(tmp_path, ["What is 1+1?", "Count the words. " + "word " * 2000])
    cfg = compose(BASE + [f"dataset.path={data}", f"output_dir={tmp_path / 'out'}", "engine.max_model_len=2048"])
    with pytest.raises(DatasetError, match=r"row 1 \(problem q1\) does not fit in engine.max_model_len=2048"):
        run(cfg)
    assert started == []
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()

"""Earlier runs correct a profile's speed (`engines.history`): each finished run records measured
over replanned generation time under the profile's digest; the next plan with that profile takes
the median of the last few."""

import json
import logging
from dataclasses import replace

from orchestrator.engines import history
from orchestrator.engines import profile as profiles
from tests.unit.test_plan_check import PROFILE


def prof(**kw):
    return replace(profiles.from_dict(PROFILE), **kw)


def test_no_history_no_correction(tmp_path):
    p = prof(replay_factor=1.2)
    out, learned = history.corrected(p, tmp_path / "runs.jsonl")
    assert out is p and learned == {"digest": history.digest(p), "factor": 1.0, "runs": 0, "fixed_s": None}
    assert history.describe(learned) == ""


def test_the_median_of_the_last_runs_scales_the_replay_factor(tmp_path):
    path = tmp_path / "runs.jsonl"
    p = prof(replay_factor=1.2)
    _, learned = history.corrected(p, path)
    for measured in (110.0, 130.0, 120.0):  # ratios 1.1, 1.3, 1.2 against a 100 s replan
        assert history.record(learned, measured, 100.0, "out", path=path) == measured / 100
    out, again = history.corrected(p, path)
    assert again["factor"] == 1.2 and again["runs"] == 3 and again["digest"] == learned["digest"]
    assert abs(out.replay_factor - 1.44) < 1e-9 and "median of the last 3 run(s)" in out.notes[-1]
    assert "x1.200 from the last 3 run(s)" in history.describe(again)
    # a run planned with that correction records its ratio against the profile as calibrated
    assert history.record(again, 100.0, 100.0, path=path) == 1.2
    # only the last WINDOW runs count: 1.3, 1.2, 1.2 after 1.1 ... and the later 0.9s
    for _ in range(3):
        history.record(learned, 90.0, 100.0, path=path)
    assert [e["ratio"] for e in history.entries(learned["digest"], path)][-history.WINDOW:] == [1.2, 1.2, 0.9, 0.9, 0.9]
    assert history.corrected(p, path)[1]["factor"] == 0.9
    assert history.corrected(p, path)[1]["fixed_s"] is None  # no run recorded its time outside generation


def test_the_wall_time_outside_generation_is_the_median_of_the_runs_that_recorded_it(tmp_path):
    path = tmp_path / "runs.jsonl"
    p = prof()
    _, learned = history.corrected(p, path)
    history.record(learned, 100.0, 100.0, path=path)  # an older run without it
    for fixed in (70.0, 96.0, 84.0):
        history.record(learned, 100.0, 100.0, path=path, fixed_s=fixed)
    history.record(learned, 100.0, 100.0, path=path, fixed_s=-3.0)  # a broken clock: not recorded
    out, again = history.corrected(p, path)
    assert again["fixed_s"] == 84.0 and again["runs"] == 5 and "wall = generation + 84 s" in out.notes[-1]
    assert [e.get("fixed_s") for e in history.entries(again["digest"], path)] == [None, 70.0, 96.0, 84.0, None]


def test_other_profiles_broken_lines_and_implausible_ratios_are_ignored(tmp_path):
    path = tmp_path / "runs.jsonl"
    p, other = prof(), prof(replay_factor=1.5)  # a new calibration: another digest
    assert history.digest(p) != history.digest(other)
    history.record(history.corrected(other, path)[1], 150.0, 100.0, path=path)
    with path.open("a") as f:
        f.write("not json\n" + json.dumps({"digest": history.digest(p), "ratio": 9.0}) + "\n")
        f.write(json.dumps({"digest": history.digest(p)}) + "\n")
    assert history.corrected(p, path)[1]["runs"] == 0
    assert history.corrected(other, path)[1]["factor"] == 1.5


def test_nothing_to_record_and_an_unwritable_cache_never_fail_a_run(tmp_path, caplog):
    _, learned = history.corrected(prof(), tmp_path / "runs.jsonl")
    assert history.record(learned, None, 100.0, path=tmp_path / "runs.jsonl") is None
    assert history.record(learned, 100.0, 0.0, path=tmp_path / "runs.jsonl") is None
    assert not (tmp_path / "runs.jsonl").exists()
    blocked = tmp_path / "file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING):
        assert history.record(learned, 100.0, 90.0, path=blocked / "runs.jsonl") is None
    assert "could not record" in caplog.text

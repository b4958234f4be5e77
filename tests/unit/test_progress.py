"""The progress bar counts work: sampled tokens against the run's budget (`driver.progress`),
fed by the coordinator's per-group work (`Progress.work`), in-process on a virtual clock."""

import asyncio
import time
import types

from aiotools import VirtualClock

from orchestrator.config import CONF_DIR
from orchestrator.coordinator.actor import Coordinator
from orchestrator.coordinator.messages import Poll, Progress
from orchestrator.core.group import Group
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import Problem, SamplingSpec
from orchestrator.driver import console
from orchestrator.driver.progress import WorkMeter, group_budget
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.local import LocalHandle
from orchestrator.engines.tokenizer import FakeTokenizer

PROMPTS = load_prompts(CONF_DIR / "prompts" / "default.yaml")
PROBLEMS = [Problem(f"p{i}", "synthetic", f"What is {i} + {i}?", str(2 * i)) for i in range(6)]
# think_end_prob: some paths stop early, and the bar must still end at 100%
ENGINE = {"latency": {"step_base_s": 0.01, "step_per_seq_s": 1e-5, "prefill_s_per_token": 1e-5,
                      "max_num_seqs": 8}, "think_end_prob": 0.05, "summary_words": 8}
LEAP = LeapParams(paths=4, T=300, max_rounds=3, top_k=2, summary_tokens=64, answer_tokens=32)


def poll(progress: Progress, groups=(), errors=()) -> Poll:
    return Poll(groups=[{"point": pt, "problem_id": pid} for pt, pid in groups], errors=list(errors),
                checkpoints=[], progress=progress, all_done=False)


def test_a_path_budget_is_its_segments_summaries_and_answer():
    assert LEAP.segment_budget == 900 and LEAP.sampled_budget == 900 + 2 * 64 + 64  # 2 summaries, forced answer
    ind = LeapParams(T=100, max_rounds=2, mode="independent", summary_tokens=10, answer_tokens=30)
    assert ind.segment_budget == 200 and ind.sampled_budget == 230  # no summaries; the longer final answer
    cm = LeapParams(T=100, max_rounds=2, mode="compute_matched", token_budget=150, answer_tokens=30)
    assert cm.segment_budget == 150
    # a compute-matched point before its budget is known: the round budget it acts as meanwhile
    assert LeapParams(T=100, max_rounds=2, mode="compute_matched", match_point="x").segment_budget == 200
    assert group_budget(LEAP) == 4 * 1092 and group_budget(LEAP, {"paths": 2}) == 2 * 1092


def test_group_work_counts_sampled_tokens_and_a_finished_path_whole():
    tok = FakeTokenizer()
    g = Group("pt|p0", PROBLEMS[0], tok.encode("prompt"), LEAP, PROMPTS, tok)
    assert g.work() == 0
    g.paths[0].requests = [{"new_tokens": 300}, {"new_tokens": 50}]  # a segment and its summary
    g.paths[1].requests = [{"new_tokens": 5000}]  # never more than a path's budget
    g.paths[2].requests, g.paths[2].phase = [{"new_tokens": 40}], "done"  # stopped early: its budget is spent
    assert g.work() == 350 + 1092 + 1092 and g.path_work("pt|p0/0") == 350 and g.path_work("other") == 0


def test_meter_counts_running_work_and_finished_groups_whole():
    m = WorkMeter({"pt": LEAP}, [("pt", "p0"), ("pt", "p1"), ("pt", "p2")])
    assert (m.total, m.done, m.groups_total) == (3 * 4368, 0, 3)
    m.update(poll(Progress(work={"pt|p0": 2184, "pt|p1": 1092})))
    assert m.done == 3276 and m.groups_done == 0 and 0 < m.fraction < 1
    m.update(poll(Progress(work={"pt|p1": 1200}), groups=[("pt", "p0")], errors=["pt|p2: RuntimeError: boom"]))
    assert m.done == 4368 + 1200 + 4368 and m.groups_done == 2
    m.update(poll(Progress(), groups=[("pt", "p1")]))
    assert m.fraction == 1.0 and m.groups_done == 3


def test_meter_takes_a_phases_budgets_and_drops_groups_never_submitted():
    cm = LeapParams(paths=4, T=300, max_rounds=3, mode="compute_matched", match_point="pt")
    m = WorkMeter({"pt": LEAP, "cm": cm}, [("pt", "p0"), ("pt", "p1"), ("cm", "p0"), ("cm", "p1")])
    # the matched groups: their round budget until theirs is known
    assert m.total == 2 * 4368 + 2 * group_budget(cm) and group_budget(cm) == 4 * (900 + 1024)
    m.plan([("pt", PROBLEMS[0], {}), ("pt", PROBLEMS[1], {})])
    m.update(poll(Progress(), groups=[("pt", "p0"), ("pt", "p1")]))
    assert m.done == 2 * 4368 and m.groups_done == 2
    # phase 2: p1's matched point has no result to match, so only p0 is submitted
    m.plan([("cm", PROBLEMS[0], {"token_budget": 500})], final=True)
    assert m.total == 2 * 4368 + 4 * (500 + 1024) and m.groups_total == 3
    m.update(poll(Progress(), groups=[("cm", "p0")]))
    assert m.fraction == 1.0


def test_time_left_comes_from_the_plan_when_there_is_one():
    m = WorkMeter({"pt": LEAP}, [("pt", "p0"), ("pt", "p1")], expected_s=100.0)
    m.start()
    m.update(poll(Progress(work={"pt|p0": 2184})))
    assert m.left_s() == (75.0, "plan")
    assert "groups 0/2" in m.text() and "~01:15 left (plan)" in m.text()
    rate = WorkMeter({"pt": LEAP}, [("pt", "p0")])
    assert rate.left_s() == (None, "rate")  # no work yet, no rate
    rate.started = time.monotonic() - 10.0
    rate.update(poll(Progress(work={"pt|p0": 1092})))
    left, source = rate.left_s()
    assert source == "rate" and 29.0 < left < 31.5  # a quarter done in 10 s


def test_bar_shows_work_groups_and_the_coordinators_figures(capsys):
    m = WorkMeter({"pt": LEAP}, [("pt", "p0"), ("pt", "p1")], expected_s=60.0)
    bar = console.progress_bar(types.SimpleNamespace(progress=True), m)
    m.update(poll(Progress(work={"pt|p0": 4368}, rounds={"pt|p0": 3}, active_paths=4, tokens_per_s=120.0)))
    console.show(bar, m)
    assert bar.n == 4368 and bar.total == 2 * 4368
    bar.close()
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "work  50%|" in err and "groups 0/2" in err and "left (plan) | r3:1 | paths 4 | 120 tok/s" in err
    assert console.progress_bar(types.SimpleNamespace(progress=False), m) is None


def test_coordinator_work_moves_before_any_group_ends_and_ends_at_the_budget(monkeypatch):
    apply, checked = Coordinator._apply, []

    def exact(self, group, res, waiting):  # the work kept per result is the group's, recounted
        apply(self, group, res, waiting)
        checked.append(self.progress[group.key].work == group.work())

    monkeypatch.setattr(Coordinator, "_apply", exact)

    async def main():
        with VirtualClock().patch_loop():
            reps = [FakeReplica(i, engine=ENGINE) for i in range(2)]
            coord = Coordinator([LocalHandle(r) for r in reps], "fake", {"pt": LEAP}, PROMPTS, SamplingSpec(),
                                capacity=[8, 8])
            items = [("pt", p, {}) for p in PROBLEMS]
            meter = WorkMeter({"pt": LEAP}, [("pt", p.id) for p in PROBLEMS])
            meter.plan(items, final=True)
            await coord.submit(items)
            seen = []
            while True:
                update = await coord.poll(0.5)
                meter.update(update)
                seen.append((meter.fraction, meter.groups_done, update.progress))
                if update.all_done:
                    return seen

    seen = asyncio.run(main())
    assert checked and all(checked)
    assert any(0 < f < 1 and done == 0 for f, done, _ in seen)  # the bar moves before a group ends
    fractions = [f for f, _, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    last = seen[-1][2]
    assert last.work_budget == len(PROBLEMS) * 4368 and last.work_done == last.work_budget and not last.work

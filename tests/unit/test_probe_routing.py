"""Probes (`GenRequest.branch`) through the coordinator, in-process over fake replicas: a probe goes
to the path's replica, leaves what the coordinator believes that replica holds, and survives the
replica's death (it is sent whole to another one, which stores nothing of it)."""

import asyncio

from aiotools import VirtualClock

from orchestrator.config import CONF_DIR
from orchestrator.coordinator.actor import Coordinator
from orchestrator.core.params import LeapParams
from orchestrator.core.prompts import load_prompts
from orchestrator.core.types import GenRequest, SamplingSpec
from orchestrator.engines.fake import FakeReplica
from orchestrator.engines.local import LocalHandle
from orchestrator.engines.tokenizer import FakeTokenizer
from tests.inprocess import Dies

TOK = FakeTokenizer()
KEY = "pt|p0/0"
PROMPT = TOK.encode("What is 2 + 2?\n<think>\n")
FORCE = TOK.encode("\n\nSo the final answer is \\boxed{")


class Path:
    """The part of a `Group` the coordinator's `_send` uses, for one path."""

    def __init__(self):
        self.tokens = list(PROMPT)
        self.lost = 0

    def full_tokens(self, key):
        return list(self.tokens)

    def replica_lost(self, key):
        self.lost += 1


def coordinator(replicas) -> Coordinator:
    coord = Coordinator([LocalHandle(r) for r in replicas], "fake", {"pt": LeapParams(paths=1)},
                        load_prompts(CONF_DIR / "prompts" / "default.yaml"), SamplingSpec(),
                        capacity=[8] * len(replicas), epoch=1)
    coord.pool.place([KEY])
    return coord


def segment(path, n=40):
    return GenRequest(KEY, keep=len(path.tokens), append=[], max_tokens=n)


def probe(path):
    return GenRequest(KEY, keep=len(path.tokens), append=FORCE, max_tokens=8, kind="answer", branch=True,
                      logprobs=20)


async def first_segment(coord, path):
    """The path's first segment; its tokens join the path."""
    res = await coord._send(path, segment(path))
    path.tokens += res.token_ids
    return res


def run(coro):
    async def main():
        with VirtualClock().patch_loop():
            return await coro()
    return asyncio.run(main())


def test_a_probe_goes_to_the_paths_replica_and_changes_nothing_it_holds():
    replicas = [FakeReplica(0), FakeReplica(1)]

    async def go():
        coord = coordinator(replicas)
        path = Path()
        res = await first_segment(coord, path)
        r = coord.pool.assign[KEY]
        stored = list(replicas[r].paths[KEY])
        ans = await coord._send(path, probe(path))
        assert ans.replica == r and ans.cached_tokens > 0 and len(ans.confidences) == len(ans.token_ids)
        assert list(replicas[r].paths[KEY]) == stored and coord.pool.holder[KEY] == r
        nxt = await coord._send(path, segment(path))  # no `full` needed: the replica still holds it
        assert nxt.prompt_tokens == len(path.tokens)
        return [res, ans, nxt]

    results = run(go)
    served = [rep.counters for rep in replicas]
    assert sum(c["requests"] for c in served) == 3
    for field in ("prompt_tokens", "cached_tokens"):
        assert sum(c[field] for c in served) == sum(getattr(x, field) for x in results)
    assert sum(c["new_tokens"] for c in served) == sum(len(x.token_ids) for x in results)


def test_a_probe_whose_replica_dies_is_answered_by_another_which_stores_nothing():
    replicas = [Dies(0, good=1), FakeReplica(1)]

    async def go():
        coord = coordinator(replicas)
        path = Path()
        assert coord.pool.assign[KEY] == 0
        await first_segment(coord, path)
        ans = await coord._send(path, probe(path))  # replica 0 dies: the probe moves to 1
        assert ans.replica == 1 and path.lost == 1 and coord.pool.assign[KEY] == 1
        assert KEY not in replicas[1].paths and KEY not in coord.pool.holder
        nxt = await coord._send(path, segment(path))  # the path itself is sent whole once
        assert nxt.replica == 1 and list(replicas[1].paths[KEY][: len(path.tokens)]) == path.tokens
        return ans

    ans = run(go)
    # the same answer and confidences as a probe on the replica that never died
    replicas = [FakeReplica(0), FakeReplica(1)]

    async def undisturbed():
        coord = coordinator(replicas)
        path = Path()
        await first_segment(coord, path)
        return await coord._send(path, probe(path))

    same = run(undisturbed)
    assert (ans.token_ids, ans.confidences) == (same.token_ids, same.confidences)

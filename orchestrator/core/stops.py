"""The part of a group's round state machine that stopping rules add (`Group` inherits it):
answer probes and the check that follows them, segment ends that wait on other paths, and
paths or whole problems stopped early. The rules themselves live in `core.methods`; nothing
here knows a rule by name.

- After a segment that neither finished nor was the last, a rule that `probes` sends the path
  to `probe`: a branch request (`GenRequest.branch`) that appends the answer-forcing suffix to a
  copy of the path and samples at most leap.probe_tokens; its answer is kept, its tokens never
  enter the path. The path then waits in `held` until no path of the problem is still sampling a
  segment or probing; the rule's `stop_group` then sees the held paths' answers and either
  forces all of them (stopped) or starts their next round.
- At each segment end the rule's `check_path` may stop the path (`finish_reason` stopped, no
  answer forced) or answer `HOLD`: the path waits in `pending` with its segment's outcome until
  the rule can decide (what it waits on is the rule's business: e.g. warm-up paths), so that
  decisions depend on the paths' progress in rounds, never on which result arrives first.
"""

from __future__ import annotations

from .grading import current_answer
from .methods import HOLD, Barrier
from .paths import PathState
from .types import GenResult

BRANCHES = ("probe",)  # request kinds that leave the path's stored tokens alone


class StopChecks:
    """Mixed into `Group`: uses its paths, params, method, tokenizer and prompts."""

    def forcing_ids(self) -> list[int]:
        """The answer-forcing suffix's token ids (what an answer probe appends)."""
        if self._forcing is None:
            self._forcing = list(self.tok.encode(self.prompts.forcing(self.problem.kind)))
        return list(self._forcing)

    def _check_segment_end(self, p: PathState, finish_reason: str, stop_str: str | None) -> bool:
        """Ask the stopping rule about the segment the path just ended; True when it stopped
        the path or made it wait (`_segment_end` must not run now)."""
        verdict = self.method.stopping.check_path(self.params, p, self.paths, self.rule_state)
        if verdict is None:
            return False
        if verdict == HOLD:
            p.phase, p.pending = "pending", [finish_reason, stop_str]
        else:
            self._stop(p, verdict)
        return True

    def _resolve_pending(self) -> None:
        """Ask again about every waiting segment end, in path order."""
        for q in self.paths:
            if q.phase != "pending":
                continue
            verdict = self.method.stopping.check_path(self.params, q, self.paths, self.rule_state)
            if verdict == HOLD:
                continue
            finish_reason, stop_str = q.pending
            q.pending = None
            if verdict is None:
                self._segment_end(q, finish_reason, stop_str)
            else:
                self._stop(q, verdict)

    def _after_probe(self, p: PathState, res: GenResult, new: list[int]) -> None:
        forcing = self.forcing_ids()
        p.probe_answers.append(current_answer(self.tok.decode(forcing + new), self.problem.kind))
        p.probe_injected += len(forcing)
        p.phase = "held"

    def _release_held(self) -> None:
        """Every live path has probed: the rule stops the problem or the next round starts."""
        held = [q for q in self.paths if q.phase == "held"]
        if not held:
            return
        check = Barrier(self.params, self.problem, held[0].round, tuple(held), tuple("" for _ in held),
                        tuple(self.paths), embed=self.embed, answers=tuple(q.probe_answers[-1] for q in held),
                        state=self.rule_state)
        if self.method.stopping.stop_group(check):
            for q in held:
                self._stop_and_force(q)
        else:
            for q in held:
                q.round += 1
                q.phase = "segment"
        self.barriers_released += 1

    def _stop(self, p: PathState, reason: str) -> None:
        """End the path now, with no forced answer."""
        p.stop_reason, p.stopped_at_round = reason, p.round
        self._finish(p, "stopped")

    def _stop_and_force(self, p: PathState) -> None:
        """The rule stopped the path's problem: its answer is forced now."""
        p.stop_reason, p.stopped_at_round = self.method.stopping.group_stop_reason, p.round
        self._force(p)

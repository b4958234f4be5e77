"""Checks of the knobs of the consensus and confidence stopping rules, the shared pool and
`leap.stopping`, for `config.leap_params` (which raises them as `ConfigError`). Messages name
the key as the caller spells it (`leap.KEY`, or `sweep[i].KEY` for a value a sweep entry set)."""

from __future__ import annotations

from typing import Callable

from .registry import method, stopping_names


class KnobError(ValueError):
    """A knob's value that means nothing; the message names the key."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(key: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise KnobError(f"{key}={value!r} must be an integer >= {minimum}")


def check_knobs(values: dict, key: Callable[[str], str]) -> None:
    """Refuse values of the methods' knobs that mean nothing (any point, whatever its method:
    a sweep may switch methods per point) and a confidence stop with no path left to stop."""
    stopping = values["stopping"]
    if stopping is not None and stopping not in stopping_names():
        raise KnobError(f"{key('stopping')}={stopping!r} is not a registered stopping rule; choose one of "
                          f"{list(stopping_names())} (or null: the method's own)")
    share = values["consensus_share"]
    if not _number(share) or not 0 < share <= 1:
        raise KnobError(f"{key('consensus_share')}={share!r} must be a number in (0, 1] (the share of live "
                          f"paths whose answers must agree)")
    keep = values["confidence_keep"]
    if not _number(keep) or not 0 < keep < 100:
        raise KnobError(f"{key('confidence_keep')}={keep!r} must be a percentage in (0, 100) (DeepConf keeps "
                          f"the top 10 or 90 percent)")
    threshold = values["pool_threshold"]
    if not _number(threshold) or not 0 < threshold <= 1:
        raise KnobError(f"{key('pool_threshold')}={threshold!r} must be a similarity in (0, 1]")
    for name in ("consensus_checks", "probe_tokens", "confidence_window", "confidence_warmup",
                 "confidence_top_logprobs", "pool_tokens"):
        _integer(key(name), values[name], 1)
    chosen = method(values["mode"], stopping)
    rule = chosen.stopping
    first = values["confidence_warmup_first"]
    if not isinstance(first, bool):
        raise KnobError(f"{key('confidence_warmup_first')}={first!r} must be true or false")
    if rule.vote == "confidence" and first and chosen.communication.exchanges:
        raise KnobError(f"{key('confidence_warmup_first')}=true with {key('mode')}={values['mode']}: paths that "
                        f"meet at barriers cannot wait for the warm-up paths to finish first; set "
                        f"{key('confidence_warmup_first')}=false (all paths run together, checked once the "
                        f"threshold exists)")
    if rule.vote == "confidence" and values["confidence_warmup"] >= values["paths"]:
        raise KnobError(f"{key('confidence_warmup')}={values['confidence_warmup']} with {key('paths')}="
                          f"{values['paths']}: confidence stopping never stops a warm-up path, so it needs "
                          f"fewer warm-up paths than paths")

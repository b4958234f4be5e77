"""Checks of the leap.* keys of the issue-18 methods (consensus and confidence stopping, the
shared pool, `leap.stopping`), for `config.leap_params`. Errors name the key as the caller spells
it (`leap.KEY`, or `sweep[i].KEY` for a value a sweep entry set)."""

from __future__ import annotations

from typing import Callable

from .core.methods import method, stopping_names
from .errors import ConfigError


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(key: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r} must be an integer >= {minimum}")


def check_method_keys(values: dict, key: Callable[[str], str]) -> None:
    """Refuse values of the methods' knobs that mean nothing (any point, whatever its method:
    a sweep may switch methods per point) and a confidence stop with no path left to stop."""
    stopping = values["stopping"]
    if stopping is not None and stopping not in stopping_names():
        raise ConfigError(f"{key('stopping')}={stopping!r} is not a registered stopping rule; choose one of "
                          f"{list(stopping_names())} (or null: the method's own)")
    share = values["consensus_share"]
    if not _number(share) or not 0 < share <= 1:
        raise ConfigError(f"{key('consensus_share')}={share!r} must be a number in (0, 1] (the share of live "
                          f"paths whose answers must agree)")
    keep = values["confidence_keep"]
    if not _number(keep) or not 0 < keep < 100:
        raise ConfigError(f"{key('confidence_keep')}={keep!r} must be a percentage in (0, 100) (DeepConf keeps "
                          f"the top 10 or 90 percent)")
    threshold = values["pool_threshold"]
    if not _number(threshold) or not 0 < threshold <= 1:
        raise ConfigError(f"{key('pool_threshold')}={threshold!r} must be a similarity in (0, 1]")
    for name in ("consensus_checks", "probe_tokens", "confidence_window", "confidence_warmup",
                 "confidence_top_logprobs", "pool_tokens"):
        _integer(key(name), values[name], 1)
    rule = method(values["mode"], stopping).stopping
    if rule.vote == "confidence" and values["confidence_warmup"] >= values["paths"]:
        raise ConfigError(f"{key('confidence_warmup')}={values['confidence_warmup']} with {key('paths')}="
                          f"{values['paths']}: confidence stopping never stops a warm-up path, so it needs "
                          f"fewer warm-up paths than paths")

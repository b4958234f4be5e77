"""The registered strategies and methods, by name, with the built-in ones.

`leap.mode` names a method; a method names a communication strategy and a stopping rule. A new
method is a module with its strategy classes and a few `register_*` calls; the round state
machine never changes for one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Generic, TypeVar

from .base import Communication, Method, StoppingRule
from .confident import ConfidenceStop
from .consensus import ConsensusStop
from .pooled import Pooled
from .rounds import RoundBudget
from .routed import Routed
from .self_opened import SelfOpened
from .silent import Silent
from .sampled_budget import TokenBudget

Item = TypeVar("Item")


class UnknownName(ValueError):
    """A name that nothing is registered under; the message lists what is."""


class Registry(Generic[Item]):
    """Names to items of one kind; a name is registered once."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Item] = {}

    def register(self, name: str, item: Item) -> Item:
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def find(self, name) -> Item | None:
        return self._items.get(name) if isinstance(name, str) else None

    def get(self, name: str) -> Item:
        item = self.find(name)
        if item is None:
            raise UnknownName(f"unknown {self.what} {name!r}; registered: {list(self._items)}")
        return item

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)


COMMUNICATIONS: Registry[Communication] = Registry("communication strategy")
STOPPING_RULES: Registry[StoppingRule] = Registry("stopping rule")
METHODS: Registry[Method] = Registry("method")


def register_communication(name: str, strategy: Communication) -> Communication:
    return COMMUNICATIONS.register(name, strategy)


def register_stopping(name: str, rule: StoppingRule) -> StoppingRule:
    return STOPPING_RULES.register(name, rule)


def register_method(name: str, communication: str, stopping: str, *, uses_leap_note: bool = False,
                    baseline: str | None = None) -> Method:
    """Register `name` (a `leap.mode` value) as the registered strategies of those names."""
    return METHODS.register(name, Method(name, COMMUNICATIONS.get(communication), STOPPING_RULES.get(stopping),
                                         uses_leap_note=uses_leap_note, baseline=baseline))


def method(name: str, stopping: str | None = None) -> Method:
    """The method `leap.mode=name` runs, with the stopping rule `leap.stopping=stopping` in
    place of its own when that is set; `UnknownName` lists the registered ones."""
    base = METHODS.get(name)
    if stopping is None:
        return base
    return _combined(base, stopping, STOPPING_RULES.get(stopping))


def find_method(name, stopping: str | None = None) -> Method | None:
    """The method of that name (and stopping rule), or None (e.g. a mode of an older run's
    settings)."""
    base = METHODS.find(name)
    if base is None or stopping is None:
        return base
    rule = STOPPING_RULES.find(stopping)
    return None if rule is None else _combined(base, stopping, rule)


@lru_cache(maxsize=None)
def _combined(base: Method, stopping: str, rule: StoppingRule) -> Method:
    """`base` with another stopping rule; it is no baseline any more (it stops otherwise)."""
    if rule is base.stopping:
        return base
    return Method(f"{base.name}+{stopping}", base.communication, rule, uses_leap_note=base.uses_leap_note)


def stopping_names() -> tuple[str, ...]:
    return STOPPING_RULES.names()


def method_names() -> tuple[str, ...]:
    return METHODS.names()


register_communication("routed", Routed())
register_communication("self_opened", SelfOpened())
register_communication("none", Silent())
register_stopping("rounds", RoundBudget())
register_stopping("token_budget", TokenBudget())
register_method("leap", "routed", "rounds", uses_leap_note=True)
register_method("leap_t", "self_opened", "rounds")
register_method("independent", "none", "rounds", baseline="independent")
register_method("compute_matched", "none", "token_budget", baseline="compute_matched")
# issue 18: LeaP's rivals on the same engines
register_communication("pool", Pooled())
register_stopping("consensus", ConsensusStop())
register_stopping("confidence", ConfidenceStop())
register_method("pool", "pool", "rounds", uses_leap_note=True)
register_method("consensus", "none", "consensus")
register_method("deepconf", "none", "confidence")

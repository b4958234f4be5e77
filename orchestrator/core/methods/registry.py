"""The registered strategies and methods, by name, with the built-in ones.

`leap.mode` names a method; a method names a communication strategy and a stopping rule. A new
method is a module with its strategy classes and a few `register_*` calls; the round state
machine never changes for one.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .base import Communication, Method, StoppingRule
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


def method(name: str) -> Method:
    """The method `leap.mode=name` runs; `UnknownName` lists the registered ones."""
    return METHODS.get(name)


def find_method(name) -> Method | None:
    """The method of that name, or None (e.g. a mode of an older run's settings)."""
    return METHODS.find(name)


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

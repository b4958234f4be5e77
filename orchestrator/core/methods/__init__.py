"""LeaP methods as registered strategies (`leap.mode`): what a path receives at a barrier and
when a path or a problem stops. `base` defines the interfaces, `registry` the names and the
built-in methods, and each other module one implementation."""

from .base import Barrier, Communication, Knobs, Method, Peers, StoppingRule
from .registry import (
    COMMUNICATIONS,
    METHODS,
    STOPPING_RULES,
    UnknownName,
    find_method,
    method,
    method_names,
    register_communication,
    register_method,
    register_stopping,
    stopping_names,
)

__all__ = [
    "Barrier", "COMMUNICATIONS", "Communication", "Knobs", "METHODS", "Method", "Peers", "STOPPING_RULES",
    "StoppingRule", "UnknownName", "find_method", "method", "method_names", "register_communication",
    "register_method", "register_stopping", "stopping_names",
]

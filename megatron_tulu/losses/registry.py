"""Tiny name -> function registry shared by the loss modules.

A registry is a plain ``dict[str, Callable]`` so callers can list or inspect it directly; this
module only adds the decorator that fills it and a lookup that fails with the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError):
    """Raised by :func:`lookup` for a name that is not registered; the message lists the names."""

    def __init__(self, kind: str, name: object, registered: list[str]):
        self.kind = kind
        self.name = name
        self.registered = registered
        super().__init__(f"unknown {kind} {name!r}; registered: {', '.join(registered) or '(none)'}")

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return self.args[0]


def register_into(registry: MutableMapping[str, F], name: str, kind: str) -> Callable[[F], F]:
    """Decorator that stores ``fn`` under ``name``; registering a name twice is an error."""

    def decorator(fn: F) -> F:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = fn
        return fn

    return decorator


def lookup(registry: Mapping[str, F], name: str, kind: str) -> F:
    """``registry[name]``, or :class:`UnknownNameError` naming every registered entry."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise UnknownNameError(kind, name, sorted(registry)) from None

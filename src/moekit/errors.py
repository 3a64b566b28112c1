"""moekit's exception types and the one helper that raises them for bad arguments."""
from __future__ import annotations

from typing import Any


class MoEInputError(ValueError):
    """Bad input to a public moekit call: the message names the argument, what was expected and what came."""


def check_arg(ok: bool, name: str, expected: Any, actual: Any) -> None:
    """Raise :class:`MoEInputError` unless ``ok``; message: ``<name>: expected <expected>, got <actual>``."""
    if not ok:
        raise MoEInputError(f"{name}: expected {expected}, got {actual}")

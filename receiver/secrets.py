"""Secret references: configuration names where a secret lives, never the secret itself.

Forms: ``env:NAME`` (ECS injects Secrets Manager values as environment variables) and
``file:PATH``. The reference string (``ref``) is safe to log; the value never is, and
``repr`` shows only the reference.
"""

from __future__ import annotations

import os
from pathlib import Path

ALLOWED_FORMS = "env:NAME or file:PATH"


class SecretError(ValueError):
    """A reference that is malformed or points at nothing; the message names the reference only."""


class SecretRef:
    """A resolved secret reference. ``values()`` are the currently accepted values."""

    __slots__ = ("_values", "ref")

    def __init__(self, ref: str, values: tuple[str, ...]) -> None:
        self.ref = ref
        self._values = values

    def __repr__(self) -> str:
        return f"SecretRef({self.ref!r})"

    def values(self) -> tuple[str, ...]:
        """Every value that currently counts as this secret (more than one during a rotation)."""
        return self._values

    def value(self) -> str:
        """The current value (the first of :meth:`values`)."""
        return self._values[0]


def resolve(ref: object) -> SecretRef:
    """Parse and read a reference. Raises SecretError if malformed, unset, unreadable or empty."""
    if not isinstance(ref, str):
        raise SecretError(f"must be a secret reference ({ALLOWED_FORMS}), not an inline value")
    scheme, sep, target = ref.partition(":")
    if not sep or not target:
        raise SecretError(f"must be a secret reference ({ALLOWED_FORMS})")
    if scheme == "env":
        value = os.environ.get(target)
        if value is None:
            raise SecretError(f"{ref}: environment variable {target} is not set")
    elif scheme == "file":
        try:
            value = Path(target).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"{ref}: cannot read file ({exc.strerror})") from None
    else:
        raise SecretError(f"unknown secret scheme {scheme!r}; allowed: {ALLOWED_FORMS}")
    if not value:
        raise SecretError(f"{ref}: the secret is empty")
    return SecretRef(ref, (value,))

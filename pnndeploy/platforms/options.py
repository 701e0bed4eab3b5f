"""Platform options: what a platform lets a user choose about the chips a model is trained for.

A mesh's size, a diffractive setup's grid, pixel pitch and distances: each is declared once by its platform
(name, default, units, what it may be), set with `train --platform-option KEY=VALUE` or ``platform_options:`` in
a config, and recorded in the model file's ``platform_params``.  :meth:`Platform.configure
<pnndeploy.platforms.base.Platform.configure>` gives the platform with those values; every consumer of a model
asks :func:`pnndeploy.platforms.platform_for` for it, so the options travel with the model, not with the code.

Values read from a model file are checked the same way as a user's (a hostile file gets one line, never a huge
allocation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlatformOption:
    """One choice a platform offers; its type is the default's (int, float or str)."""

    name: str
    default: int | float | str
    units: str
    help: str
    #: The values a string option may take.
    choices: tuple[str, ...] = ()
    #: Inclusive bounds of a number.
    lo: float | None = None
    hi: float | None = None

    @property
    def kind(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """``grid=64 (px, 16..512): the side of a mask`` for help texts and errors."""
        if self.choices:
            allowed = "|".join(self.choices)
        else:
            allowed = f"{self.lo:g}..{self.hi:g}" if self.lo is not None and self.hi is not None else "a number"
        units = f"{self.units}, " if self.units and self.units != "1" else ""
        return f"{self.name}={self.default} ({units}{allowed}): {self.help}"

    def parse(self, text: str) -> int | float | str:
        """A command-line value (text) as this option's type; ValueError says what was expected."""
        if self.kind is str:
            return text
        try:
            return self.kind(text) if self.kind is float else int(text, 10)
        except ValueError:
            raise ValueError(self._expected()) from None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not a value of this option, or None."""
        if self.kind is str:
            if not isinstance(value, str) or value not in self.choices:
                return self._expected()
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._expected()
        if self.kind is int and not isinstance(value, int):
            return self._expected()
        if isinstance(value, float) and not math.isfinite(value):
            return self._expected()
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            return self._expected()         # (an int beyond any float compares exactly, never overflows)
        return None

    def _expected(self) -> str:
        if self.kind is str:
            return f"one of {', '.join(self.choices)}"
        what = "an integer" if self.kind is int else "a number"
        bounds = f" from {self.lo:g} to {self.hi:g}" if self.lo is not None and self.hi is not None else ""
        units = f" {self.units}" if self.units and self.units != "1" else ""
        return f"{what}{bounds}{units}"


__all__ = ["PlatformOption"]

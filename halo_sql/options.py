"""Option values, checked where they are written.

Every option a user writes (`CREATE MODEL ... WITH (...)`, `CREATE AGENT/TOOL ... WITH (...)`,
`LLM(..., max_tokens => n)`) is read through one of these functions, so a value that makes no
sense (infinite, NaN, negative, fractional where a count is meant, the wrong kind) is refused
with the option's name and the statement's place, instead of failing later inside an engine.

    >>> count(32, "CREATE MODEL m", "block_size")
    32
    >>> count(1e309, "CREATE MODEL m", "block_size")
    Traceback (most recent call last):
    ...
    halo_sql.errors.BinderError: CREATE MODEL m: block_size must be a positive integer, got inf
    >>> number(0.7, "LLM", "temperature", minimum=0.0)
    0.7
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from halo_sql.errors import BinderError, SourceLocation

MAX_COUNT = 1 << 31
"""Largest count an option may hold (tokens, rows, steps, ...): far beyond any real use, small
enough that every engine can represent it."""


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else
                                                           ("inf" if value > 0 else "-inf"))
    return repr(value)


def _fail(where: str, name: str, requirement: str, value: Any,
          location: SourceLocation | None) -> BinderError:
    return BinderError(f"{where}: {name} must be {requirement}, got {_shown(value)}",
                       location=location)


def integer(
    value: Any,
    where: str,
    name: str,
    *,
    minimum: int = 0,
    maximum: int = MAX_COUNT,
    location: SourceLocation | None = None,
) -> int:
    """An integer option in [minimum, maximum] (a float is accepted only when it is integral,
    e.g. 1e3); booleans and strings are refused."""
    requirement = (
        "a positive integer" if minimum == 1 else
        "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
    )
    if maximum < MAX_COUNT:
        requirement += f" (at most {maximum})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, name, requirement, value, location)
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise _fail(where, name, requirement, value, location)
    if not minimum <= value <= maximum:
        if value > maximum and maximum == MAX_COUNT:
            requirement += f" (at most {maximum})"
        raise _fail(where, name, requirement, value, location)
    return int(value)


def count(value: Any, where: str, name: str, *, maximum: int = MAX_COUNT,
          location: SourceLocation | None = None) -> int:
    """A positive integer: tokens, rows, steps, block sizes."""
    return integer(value, where, name, minimum=1, maximum=maximum, location=location)


def number(
    value: Any,
    where: str,
    name: str,
    *,
    minimum: float = 0.0,
    positive: bool = False,
    maximum: float = math.inf,
    location: SourceLocation | None = None,
) -> float:
    """A finite number >= minimum (> 0 when `positive`), <= maximum."""
    requirement = "a finite number " + (f"> {minimum:g}" if positive else f">= {minimum:g}")
    if math.isfinite(maximum):
        requirement += f" and <= {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, name, requirement, value, location)
    number_ = float(value)
    if (
        not math.isfinite(number_)
        or number_ < minimum
        or (positive and number_ <= minimum)
        or number_ > maximum
    ):
        raise _fail(where, name, requirement, value, location)
    return number_


def boolean(value: Any, where: str, name: str, *, location: SourceLocation | None = None) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, name, "TRUE or FALSE", value, location)
    return value


def text(value: Any, where: str, name: str, *, location: SourceLocation | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(where, name, "a string", value, location)
    return value


def texts(
    value: Any, where: str, name: str, *, location: SourceLocation | None = None
) -> str | list[str]:
    """A string, or a non-empty list of strings (e.g. one server URL per model replica)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise _fail(where, name, "a string or a non-empty list of strings", value, location)


def finite(value: Any, where: str, name: str, *, location: SourceLocation | None = None) -> Any:
    """Any value whose numbers (also inside lists) are finite: options passed on unchecked
    to an engine still never carry NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, name, "a finite number", value, location)
    if isinstance(value, list):
        for item in value:
            finite(item, where, name, location=location)
    return value


@dataclass(frozen=True)
class Option:
    """How one option is read: `kind` is one of count, integer, number, positive, fraction,
    boolean, text, texts (a string or a list of strings), any."""

    kind: str
    maximum: float | None = None


def read_options(
    options: Mapping[str, Any],
    known: Mapping[str, Option],
    where: str,
    *,
    locations: Mapping[str, SourceLocation] | None = None,
    allow_unknown: bool = False,
    owner: str = "",
) -> dict[str, Any]:
    """Check every option against `known` (unknown names are refused unless `allow_unknown`,
    whose values must still be finite); returns the options with their values normalised.
    `owner` names what takes the options in the unknown-option message (e.g. "sim")."""
    locations = locations or {}
    unknown = sorted(set(options) - set(known))
    if unknown and not allow_unknown:
        where_at = locations.get(unknown[0])
        owned = f" for {owner}" if owner else ""
        raise BinderError(
            f"{where}: unknown option(s) {unknown}{owned} (allowed: {sorted(known)})",
            location=where_at,
        )
    out: dict[str, Any] = {}
    for name, value in options.items():
        at = locations.get(name)
        option = known.get(name)
        if option is None:
            out[name] = finite(value, where, name, location=at)
            continue
        top = option.maximum
        if option.kind == "count":
            out[name] = count(value, where, name, location=at,
                              maximum=int(top) if top is not None else MAX_COUNT)
        elif option.kind == "integer":
            out[name] = integer(value, where, name, location=at,
                                maximum=int(top) if top is not None else MAX_COUNT)
        elif option.kind in ("number", "positive", "fraction"):
            out[name] = number(
                value, where, name, location=at, positive=option.kind != "number",
                maximum=1.0 if option.kind == "fraction" else (top if top is not None else math.inf),
            )
        elif option.kind == "boolean":
            out[name] = boolean(value, where, name, location=at)
        elif option.kind == "text":
            out[name] = text(value, where, name, location=at)
        elif option.kind == "texts":
            out[name] = texts(value, where, name, location=at)
        else:
            out[name] = finite(value, where, name, location=at)
    return out

"""`SET disable_rules = 'a,b'` and friends: the optimizer's session settings.

    >>> s = apply_setting(OptimizerSettings(), "SET disable_rules = 'reorder_llm_filters'")
    >>> sorted(s.disabled)
    ['reorder_llm_filters']
    >>> apply_setting(s, "RESET disable_rules").disabled
    frozenset()
    >>> apply_setting(s, "SET threads = 4") is None      # not ours: DuckDB's
    True

`SET disable_rules = 'all'` switches every rule off (the planner's plan runs as built).
"""

from __future__ import annotations

import re
from dataclasses import replace

from halo_sql.errors import ProgrammingError
from halo_sql.optimizer import OptimizerSettings, parse_rule_list, rule_names

_SET = re.compile(
    r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(disable_rules|enable_rules|optimizer_sample_rows)\s*"
    r"(?:=|\bTO\b)\s*(?:'((?:[^']|'')*)'|(\d+))\s*;?\s*$",
    re.I | re.S,
)
_RESET = re.compile(
    r"^\s*RESET\s+(disable_rules|enable_rules|optimizer_sample_rows)\s*;?\s*$", re.I
)


def is_optimizer_setting(text: str) -> bool:
    return bool(_SET.match(text) or _RESET.match(text))


def apply_setting(settings: OptimizerSettings, text: str) -> OptimizerSettings | None:
    """The settings after the SET/RESET statement `text`, or None if `text` is not one of ours.
    Unknown rule names are an error naming the known ones."""
    reset = _RESET.match(text)
    if reset:
        name = reset.group(1).lower()
        default = OptimizerSettings()
        return replace(settings, **{_FIELD[name]: getattr(default, _FIELD[name])})
    match = _SET.match(text)
    if not match:
        return None
    name = match.group(1).lower()
    if name == "optimizer_sample_rows":
        value = match.group(3) if match.group(3) is not None else match.group(2)
        try:
            rows = int(value)
        except ValueError:
            raise ProgrammingError(f"SET optimizer_sample_rows needs a number, got {value!r}") from None
        return replace(settings, sample_rows=max(0, rows))
    if match.group(2) is None:
        raise ProgrammingError(f"SET {name} needs a quoted list of rule names")
    names = parse_rule_list(match.group(2).replace("''", "'"))
    if names == {"all"}:
        names = frozenset(rule_names())
    updated = (
        replace(settings, disabled=names) if name == "disable_rules" else replace(settings, enabled=names)
    )
    updated.check()
    return updated


_FIELD = {
    "disable_rules": "disabled",
    "enable_rules": "enabled",
    "optimizer_sample_rows": "sample_rows",
}

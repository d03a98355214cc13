"""Parameter checks for SamplerParams and stages: one-line ValueErrors naming value and range."""

from __future__ import annotations

import math
import numbers

INF = math.inf


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    low_text = "-inf" if low is None else _num(low)
    high_text = "inf" if high is None else _num(high)
    return f"{left}{low_text}, {high_text}{right}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> float:
    """`value` as a finite float in range, or a ValueError naming `name`, value and range."""
    range_text = _range_text(low, high, low_open, high_open) + note
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in {range_text}, got {value!r}")
    number = float(value)
    out_of_range = (
        not math.isfinite(number)
        or (low is not None and (number <= low if low_open else number < low))
        or (high is not None and (number >= high if high_open else number > high))
    )
    if out_of_range:
        raise ValueError(f"{name} must be in {range_text}, got {number!r}")
    return number


def check_int(name: str, value: object, *, low: int, note: str = "") -> int:
    """`value` as an int >= low, or a ValueError naming `name`, the value and the range."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and float(value).is_integer()
    ):
        number = int(float(value))  # 40.0 from a UI or JSON is fine
    else:
        raise ValueError(f"{name} must be an integer >= {low}{note}, got {value!r}")
    if number < low:
        raise ValueError(f"{name} must be an integer >= {low}{note}, got {number!r}")
    return number


def check_bias(token_id: object, value: object) -> float:
    """A logit bias as a float: finite, or -inf (which bans the token)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) == -INF:
        return -INF
    return check_float(f"logit_bias[{token_id}]", value, note=" (or -inf to ban the token)")


def check_token_id(name: str, value: object) -> int:
    """Return `value` as a token id (an int >= 0), or raise ValueError naming `name`."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: token ids must be integers >= 0, got {value!r}")
    token_id = int(value)
    if token_id < 0:
        raise ValueError(f"{name}: token ids must be integers >= 0, got {token_id!r}")
    return token_id

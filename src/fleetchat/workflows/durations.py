"""Durations in definitions: ``250ms``, ``30s``, ``5m``, ``1h30m``, ``2d``, ISO 8601 ``PT5M``,
or a number of seconds."""

from __future__ import annotations

import datetime as dt
import math
import re

__all__ = ["DurationError", "parse_duration", "parse_timestamp"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h|d)"
_SHORT = re.compile(rf"(?:{_PART})+")
_SHORT_PART = re.compile(_PART)
_NUM = r"(\d+(?:[.,]\d+)?)"
_ISO = re.compile(
    rf"P(?:{_NUM}W)?(?:{_NUM}D)?(?:T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?", re.IGNORECASE
)
_ISO_SCALE = (604800.0, 86400.0, 3600.0, 60.0, 1.0)


class DurationError(ValueError):
    """A value that is not a duration (or is negative)."""


def parse_duration(value: str | float) -> float:
    """Seconds in a duration.

    Args:
        value: ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h30m"``, ``"2d"``, ISO 8601 (``"PT5M"``,
            ``"P1DT2H"``), or a number of seconds (also as a string).

    Raises:
        DurationError: anything else, or a negative or non-finite number.
    """
    if isinstance(value, bool):
        raise DurationError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return _check(float(value), value)
    if not isinstance(value, str):
        raise DurationError(f"not a duration: {value!r}")
    text = value.strip()
    try:
        return _check(float(text), value)
    except ValueError:
        pass
    if _SHORT.fullmatch(text):
        return sum(float(n) * _UNITS[unit] for n, unit in _SHORT_PART.findall(text))
    iso = _ISO.fullmatch(text)
    if iso and text.upper() not in ("P", "PT") and not text.upper().endswith("T"):
        return sum(
            float(part.replace(",", ".")) * scale
            for part, scale in zip(iso.groups(), _ISO_SCALE, strict=True)
            if part is not None
        )
    raise DurationError(
        f"not a duration: {value!r} (use 250ms, 30s, 5m, 1h30m, 2d, ISO 8601 like PT5M, "
        "or a number of seconds)"
    )


def _check(seconds: float, original: object) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"not a duration: {original!r} (must be a finite number >= 0)")
    return seconds


def parse_timestamp(text: str) -> dt.datetime | None:
    """An RFC 3339 timestamp with its offset (``2026-05-01T08:00:00Z``), or None."""
    if "T" not in text.upper() or len(text) < 20:
        return None
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None

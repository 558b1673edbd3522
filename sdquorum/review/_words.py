"""Dates, counts and lists as the review's messages and renderings write them (UTC, English)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

DAY = 86_400


def date_text(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def datetime_text(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def days(seconds: int) -> str:
    return count(seconds // DAY, "day")


def count(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def join(names: Iterable[str]) -> str:
    items = list(names)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

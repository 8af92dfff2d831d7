"""Retry delays for adapters that cannot be resolved yet. Pure."""

from __future__ import annotations


def retry_delay(retry: int, base_s: float = 5.0, cap_s: float = 600.0) -> float:
    """Exponential backoff: base, 2*base, 4*base, ... capped (retry counts from 0)."""
    if retry < 0:
        retry = 0
    # Bound the exponent so huge retry counts cannot overflow.
    return float(min(cap_s, base_s * (2 ** min(retry, 30))))

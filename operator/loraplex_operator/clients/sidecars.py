"""The sidecars' `/v1/stats` client: what the autoscaler polls (parsing and sums are `logic.stats`)."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from loraplex_operator.logic.stats import StatsSnapshot, parse_stats

log = logging.getLogger(__name__)


async def fetch_stats(session: Any, url: str, timeout_s: float) -> StatsSnapshot | None:
    """GET one sidecar's stats; None on any failure (a pod without a live sidecar is normal)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                return None
            return parse_stats(await resp.json(content_type=None))
    except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as e:
        log.debug("stats from %s unavailable: %s", url, e)
        return None

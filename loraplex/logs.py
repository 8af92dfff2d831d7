"""One logging set-up for the worker, the sidecar and the operator.

Lines go to stderr as `time LEVEL logger: message`. The level is the `level` argument (a command's --log-level),
else LORAPLEX_LOG_LEVEL, else INFO; an unknown name falls back to INFO.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ENV = "LORAPLEX_LOG_LEVEL"


def log_level(level: str | None = None) -> int:
    """The numeric level for `level`, else $LORAPLEX_LOG_LEVEL, else INFO."""
    name = str(level or os.environ.get(ENV) or "INFO").upper()
    value = logging.getLevelName(name)
    return value if isinstance(value, int) else logging.INFO


def setup_logging(level: str | None = None) -> int:
    """Configure the root logger once for this process; returns the level used."""
    lvl = log_level(level)
    logging.basicConfig(level=lvl, format=FORMAT, stream=sys.stderr)
    return lvl

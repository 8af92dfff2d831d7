"""A user name for processes that run under a uid with no passwd entry.

Kubernetes runs our containers as `runAsUser: 10001`; an image (ours, or a
platform's own base) need not list that uid in /etc/passwd. kopf names its
peering identity with `getpass.getuser()` and torch's compile cache does the
same; both raise when the uid has no entry (the operator pod crashed so on
the real node). `getpass` reads $LOGNAME/$USER first, so naming the uid there
makes every such lookup succeed without touching the image.
"""

from __future__ import annotations

import getpass
import os


def ensure_user_name() -> str:
    """The process's user name; sets $USER to `uid-N` first when the uid has no passwd entry."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        name = f"uid-{os.getuid()}"
        os.environ["USER"] = name
        return name

"""Read a hub repo's metadata (I/O). Errors become (reason, message, retryable).

Only `model_info` is called: no weights are downloaded by the operator.
Network failures are retryable (the hub may come back); a missing repo,
revision or access right needs a spec or secret change but is retried
slowly anyway, so fixing a token is picked up without touching the adapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HubError(Exception):
    reason: str
    message: str
    retryable: bool


def fetch_model_info(repo: str, revision: str, token: str | None, timeout_s: float) -> Any:
    """Blocking: call from a thread. Raises HubError."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return HfApi(endpoint=endpoint).model_info(
            repo, revision=revision, token=token or False, files_metadata=True, timeout=timeout_s
        )
    except hf_errors.GatedRepoError as e:
        raise HubError("Unauthorized", f"gated repository {repo!r}: {_short(e)}", retryable=False) from e
    except hf_errors.RevisionNotFoundError as e:
        raise HubError("RevisionNotFound", f"revision {revision!r} not found in {repo!r}", retryable=False) from e
    except hf_errors.RepositoryNotFoundError as e:
        raise HubError("RepoNotFound", f"repository {repo!r} not found or not accessible", retryable=False) from e
    except hf_errors.OfflineModeIsEnabled as e:
        raise HubError("HubUnreachable", "hub access is disabled (HF_HUB_OFFLINE)", retryable=True) from e
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        retryable = status is None or status >= 500 or status == 429
        reason = "HubUnreachable" if retryable else "HubError"
        raise HubError(reason, f"hub answered {status}: {_short(e)}", retryable) from e
    except (OSError, TimeoutError) as e:
        raise HubError("HubUnreachable", f"cannot reach the hub: {_short(e)}", retryable=True) from e
    except Exception as e:  # noqa: BLE001 - httpx and friends raise their own types
        raise HubError(
            "HubUnreachable", f"cannot reach the hub: {type(e).__name__}: {_short(e)}", retryable=True
        ) from e


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

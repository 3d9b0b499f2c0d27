"""Reading an artifact from the storage URL the Taskcluster queue answers
with: bounded in size and in total time, whatever the server does."""

import time

import requests


class StorageUnavailable(Exception):
    """Storage did not answer in time, or failed: it may work later."""


class ArtifactTooLarge(Exception):
    """The artifact is larger than the caller accepts."""


def read_artifact(url: str, *, max_bytes: int, timeout: float) -> tuple[int, bytes | None]:
    """(status, body): the body for 200, None for any other status below 500."""
    deadline = time.monotonic() + timeout
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            if response.status_code >= 500:
                raise StorageUnavailable(f"storage answered {response.status_code}")
            if response.status_code != 200:
                return response.status_code, None
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body += chunk
                if len(body) > max_bytes:
                    raise ArtifactTooLarge(f"larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise StorageUnavailable(f"storage took longer than {timeout:.0f} s")
            return 200, bytes(body)
    except requests.RequestException as error:
        raise StorageUnavailable(f"storage unreachable: {type(error).__name__}") from None

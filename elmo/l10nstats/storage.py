"""Reading an artifact from the storage URL the Taskcluster queue answers
with: bounded in size and in total time, whatever the server does."""

from elmo import bounded_http


class StorageUnavailable(Exception):
    """Storage did not answer in time, or failed: it may work later."""


class ArtifactTooLarge(Exception):
    """The artifact is larger than the caller accepts."""


def read_artifact(url: str, *, max_bytes: int, timeout: float) -> tuple[int, bytes | None]:
    """(status, body): the body for 200, None for any other status below 500."""
    try:
        answer = bounded_http.get(url, timeout=timeout, max_bytes=max_bytes)
    except bounded_http.TimedOut:
        raise StorageUnavailable(f"storage took longer than {timeout:g} s") from None
    except bounded_http.Unreachable as error:
        raise StorageUnavailable(f"storage unreachable: {error}") from None
    except bounded_http.TooLarge as error:
        raise ArtifactTooLarge(str(error)) from None
    if answer.status >= 500:
        raise StorageUnavailable(f"storage answered {answer.status}")
    return answer.status, answer.body

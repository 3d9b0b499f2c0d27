"""What processing one message came to, as the shard reports it."""

from dataclasses import dataclass

PROCESSED = "processed"
IGNORED = "ignored"
UNKNOWN_REPOSITORY = "unknown_repository"
DEAD_LETTERED = "dead_lettered"
REQUEUED = "requeued"

ACKNOWLEDGED_OUTCOMES = {PROCESSED, IGNORED, UNKNOWN_REPOSITORY, DEAD_LETTERED}
OUTCOMES = (PROCESSED, IGNORED, UNKNOWN_REPOSITORY, DEAD_LETTERED, REQUEUED)


@dataclass(frozen=True)
class Result:
    """The outcome of one message, with the repository it concerned and a
    short summary for the log line."""

    outcome: str
    repository: str = ""
    summary: str = ""

    @property
    def acknowledge(self) -> bool:
        return self.outcome in ACKNOWLEDGED_OUTCOMES

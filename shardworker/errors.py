"""The two ways processing a message can fail, as the retry policy sees them."""


class PermanentError(Exception):
    """The message can never be processed as it is: keep it as a dead letter."""


class TransientError(Exception):
    """Something outside the message failed (a host, a lock): try again later."""

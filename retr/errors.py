"""The one exception type a user can cause, and the CLI reports without a traceback."""


class RetrError(Exception):
    """Bad input, a missing or corrupt file, a mismatch: the message says what to do."""

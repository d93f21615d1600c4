"""One exception type for every user-facing error, so the CLI can print it without a traceback."""


class DllmError(Exception):
    """Bad input or a broken artefact; the message says what to do."""

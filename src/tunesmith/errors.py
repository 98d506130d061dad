"""The one exception type for user errors: its message names the file/line/key and the fix."""


class TunesmithError(Exception):
    """A user-facing error; the CLI prints its message without a traceback."""

    def __init__(self, message: str, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        return "\n".join([self.message, *self.details])

"""The one exception type for mistakes a user can fix."""


class KvbenchError(Exception):
    """A user mistake. The message names the problem and the fix; the CLI prints it as one line."""

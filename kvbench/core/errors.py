"""The one exception type for mistakes a user can fix, and the one for a run whose measuring went away."""


class KvbenchError(Exception):
    """A user mistake. The message names the problem and the fix; the CLI prints it as one line."""


class MeasuringStopped(KvbenchError):
    """What measures the run went away while it measured (a Ray cluster stopped): the run stops and keeps
    what was measured; the message says what happened, and `kvbench run` adds the command that resumes."""

"""The two roots of the project's own exceptions, here so that the pure core can raise them.

`orchestrator.errors` builds on these (exit codes, the one-paragraph message); the core only needs
to say whose move a failure is: `UserError` (fix the input and run again, exit status 2) or any
other `LeapError` (a runtime failure, exit status 1).
"""

USER_ERROR = 2
RUNTIME_FAILURE = 1


class LeapError(Exception):
    """A failure the orchestrator can explain; `exit_code` says whose move it is."""

    exit_code = RUNTIME_FAILURE


class UserError(LeapError):
    """Fix the command, config, data or cluster request and run again."""

    exit_code = USER_ERROR

"""The one exception type for mistakes a user can make (config, CLI, files).

Entry scripts catch it once, print ``error: <message>`` on one line and exit with code 2.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message is one line naming what to fix."""


EXIT_USER_ERROR = 2


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; training stops before any checkpoint is overwritten."""

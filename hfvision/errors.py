"""The exceptions a command turns into one line and an exit status: user errors (each names the field or file and
what was expected; status 2) and a training run stopped by a signal (128 + the signal number)."""


class HfvisionError(Exception):
    """An error caused by the user's input; scripts print it as one line and exit with status 2."""


class RecipeError(HfvisionError, ValueError):
    """A recipe key has an unknown name, a wrong type or an impossible value."""


class RunInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

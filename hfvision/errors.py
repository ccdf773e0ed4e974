"""User-facing errors: each carries one line that names the field or file and what was expected."""


class HfvisionError(Exception):
    """An error caused by the user's input; scripts print it as one line and exit with status 2."""


class RecipeError(HfvisionError, ValueError):
    """A recipe key has an unknown name, a wrong type or an impossible value."""

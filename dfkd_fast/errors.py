"""User-facing errors: the CLI prints them as one line, without a traceback."""


class DfkdError(Exception):
    """A problem with the user's input (names, paths, checkpoints, configurations), explained in one line."""

"""User-facing errors: the CLI prints them as one line, without a traceback."""


class DfkdError(Exception):
    """A problem with the user's input (names, paths, checkpoints, configurations), explained in one line."""


class DivergenceError(DfkdError):
    """Training produced a non-finite loss or weight: the run stops before anything non-finite is written."""

"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class DeliberateError(Exception):
    """A user-facing error: bad input, missing data, a refused operation.

    The message is a single line that names the culprit and says how to fix it. Library code
    raises this instead of exiting; `deliberate.cli.main` prints it and returns exit code 2.
    """

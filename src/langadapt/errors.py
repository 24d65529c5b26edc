"""The one exception type the CLI turns into a clear one-line error."""


class LangadaptError(Exception):
    """A user-facing error: bad input, missing file, wrong format.

    The message must say what is wrong and what was expected (which file, line or field).
    The CLI prints it on one line without a traceback and exits non-zero.
    """

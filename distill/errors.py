"""One exception type for every user-facing mistake, so the CLI can print it without a traceback."""


class DistillError(Exception):
    """Bad input: a missing file, an unknown key or preset, a malformed line.

    The message always names the thing that is wrong (file, line, key or value).
    """

"""User-facing errors: the CLI prints them as one line on stderr and exits non-zero, no traceback."""


class ThresherError(Exception):
    """An error caused by the user's input or environment (missing file, unknown field, empty corpus...).

    Raise it with a message that tells the user what to fix; the CLI prints ``error: <message>``.
    """


class SettingsMismatchError(ThresherError):
    """Results computed under other settings were about to be mixed with these ones."""

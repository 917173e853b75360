"""The one exception type for problems a user can cause and fix."""


class XrayError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with code 2.

    Raise it for bad input (missing folder, corrupt image, stale store, offline weights...).
    Bugs keep raising ordinary exceptions so they still show a traceback.
    """

"""The one exception type criupy raises for problems a user can act on.

Its message is a single line that names the problem; the command line prints it
as `criupy: <message>` and exits non-zero.
"""


class CriupyError(Exception):
    """A failure with a one-line message fit for the user."""

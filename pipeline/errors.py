"""The one exception a stage turns into a one-line message and a non-zero exit."""


class StageError(Exception):
    """Bad input or configuration the user can fix; the message names what and how."""

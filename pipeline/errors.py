"""The one exception a stage turns into a one-line message and a non-zero exit."""


class StageError(Exception):
    """Bad input or configuration the user can fix; the message names what and how."""


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first line of an exception's message, at most ``limit`` characters: what a
    one-line error quotes from a library's multi-line message (torch's load errors)."""
    empty = type(exc).__name__ if isinstance(exc, BaseException) else ""
    return (str(exc).splitlines() or [empty])[0][:limit]

"""One exception type for problems a user can fix, so every entry point can print one line; and the one way to put
text from outside into that line or a log line."""

from __future__ import annotations

LOGGED_CHARS = 300
"""The most characters of one outside value that go into a log line (a 2 MiB id must not become a 2 MiB line)."""


class UserError(Exception):
    """A problem with the user's input (file, config, data, model) that has a one-line remedy."""


def printable(value: object, limit: int = LOGGED_CHARS) -> str:
    """``value`` as text safe for one log line: control and other non-printable characters (newlines, carriage
    returns, ANSI escapes, Unicode line separators and direction overrides) escaped as Python writes them (``\\n``),
    and cut at ``limit`` characters. Device ids, topics, file names, command fields and refusal reasons come from
    outside: written raw, a newline in one of them would forge a log line of its own. Backslashes stay as they are
    (a reason that quotes a value with ``repr`` has escaped it already): a literal ``\\n`` can mislead a reader, but
    it cannot start a line."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text + "..." if cut else text

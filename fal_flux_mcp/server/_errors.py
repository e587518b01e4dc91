"""The server's own exceptions, and how their messages quote what the caller sent.

A message that quotes its input must stay short: an LLM that sent a 1 MB path or data URI by mistake
should read what was wrong, not its own megabyte back (twice, once per mention).
"""

#: The most of a caller's value an error message quotes.
QUOTE_LIMIT = 200


def reason_of(exc: BaseException) -> str:
    """Why a local operation failed, in the system's words, not an exception's class name or a huge path."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, RuntimeError):
        return "a symbolic link loop"
    return str(exc)[: 5 * QUOTE_LIMIT] or "an unexpected error"  # a sentence; only a runaway one is cut


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` in single quotes, cut to about ``limit`` characters with the full length said."""
    text = str(value)
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[: limit - 1]}…' ({len(text):,} characters)"


class JobError(Exception):
    """A request about a job that cannot be carried out; the message says what to change."""


class UnknownJobError(JobError):
    """No job with that id is in the journal."""


class SpendRefused(JobError):
    """Nothing was submitted: the spend was over a limit and not approved."""

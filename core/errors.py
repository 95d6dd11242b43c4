"""The exceptions theoryscope raises on purpose.

Every message names what was expected, what came in and, where there is one, the fix.
The CLI prints ``str(error)`` as one line and exits non-zero; anything that is not a
``TheoryscopeError`` is a bug and keeps its traceback.
"""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for
    one-line errors that wrap another library's."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class TheoryscopeError(Exception):
    """Base class: an error the user can act on."""


class SpecError(TheoryscopeError):
    """A sweep spec that cannot be run: unknown key, wrong type, impossible value."""


class DoesNotFit(SpecError):
    """A sweep whose nets would not fit in the memory of any machine offered to it."""


class StorageError(TheoryscopeError):
    """The results directory is unusable or holds something unexpected."""


class QueryError(TheoryscopeError):
    """A SQL query DuckDB rejected."""


class SweepNotFound(TheoryscopeError):
    """A sweep name with no record in the results directory."""

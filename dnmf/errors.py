"""Exceptions and warnings raised by dnmf.

Every error a user can cause carries a one-line message that names the problem and the fix;
the CLI prints it as ``error: <message>`` without a traceback.
"""

from __future__ import annotations


class DnmfError(Exception):
    """Base class of dnmf's own errors."""


class InputError(DnmfError, ValueError):
    """The input data or a parameter is unusable; the message says why and how to fix it."""


class OutputError(DnmfError, ValueError):
    """The output location cannot be written (exists, unwritable, ...)."""


class NumericalError(DnmfError, ArithmeticError):
    """The iterates became NaN or infinite; the message names the iteration and the fix."""

    def __init__(self, message: str, iteration: int | None = None) -> None:
        super().__init__(message)
        self.iteration = iteration


NON_FINITE_FIX = ("X's values may be too large or too small for its dtype: rescale X (e.g. "
                  "divide it by its maximum) or compute in float64 (--dtype float64)")


class DnmfWarning(UserWarning):
    """Base class of dnmf's warnings."""

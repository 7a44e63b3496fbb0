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


class DnmfWarning(UserWarning):
    """Base class of dnmf's warnings."""

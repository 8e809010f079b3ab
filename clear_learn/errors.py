"""The project's one error type for bad input files: :class:`DataError` names where.

Every reader of a project file (rollouts, curves, budgets, problems, response texts) raises
:class:`DataError` for content it cannot use: a file that is not gzip or UTF-8 where it should
be, a line that is not JSON, a field of the wrong type. The message names the file, the line
(counted from 1) when there is one, and the field when there is one. It subclasses
``ValueError``, so code that caught ``ValueError`` keeps working.
"""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad content in a file: ``path``, ``line`` (from 1, or None), ``field`` (or None)."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        where = self.path if line is None else f"{self.path}, line {line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")

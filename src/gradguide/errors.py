"""The project's own error: a user mistake, reported in one line with where it happened."""

from __future__ import annotations

from pathlib import Path


class GradguideError(Exception):
    """A problem the user can fix (bad input file, unknown name, missing model).

    The CLI prints ``str(err)`` and exits with code 2, no traceback. ``file``, ``line`` and
    ``field`` say where the problem is whenever it comes from a file.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

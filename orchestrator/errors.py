"""User-facing errors: one line naming the file and the field, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The CLI prints str(self) as one line and exits with status 2."""

    def __init__(self, message: str, file: str | None = None, field: str | None = None):
        self.file = file
        self.field = field
        self.message = message
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message)

"""User-facing errors: one line naming the file and the field, exit status 2."""

from __future__ import annotations

# Every character str.splitlines() breaks at: a message quoting the input stays on one line
_LINE_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_ONE_LINE = str.maketrans(_LINE_BREAKS)


def one_line(text: str) -> str:
    """`text` with its line breaks written as escapes (a field name or a path may hold one)."""
    return text.translate(_ONE_LINE)


class UserError(Exception):
    """Bad input. The CLI prints str(self) as one line and exits with status 2."""

    def __init__(self, message: str, file: str | None = None, field: str | None = None):
        message = one_line(message)
        file = one_line(file) if file is not None else None
        field = one_line(field) if field is not None else None
        self.file = file
        self.field = field
        self.message = message
        where = ": ".join(p for p in (file, field) if p)
        super().__init__(f"{where}: {message}" if where else message)

"""Errors of the model language: each points at the place in the spec with a caret."""

from __future__ import annotations

from ..errors import CnnkitError, ShapeError


class SpecError(CnnkitError, ValueError):
    """A spec that does not parse or does not build; ``pos`` is the 0-based offset."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        self.message, self.text, self.pos = message, text, pos
        super().__init__(self._render())

    def one_line(self) -> str:
        """The error on one line (the CLI's form): the message, the column and the text there."""
        if not self.text:
            return self.message
        pos = max(0, min(self.pos, len(self.text)))
        line_no = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1)
        where = f"column {col + 1}" if "\n" not in self.text else f"line {line_no}, column {col + 1}"
        near = self.text[pos:pos + 24].split("\n")[0]
        near = near + "..." if len(near) == 24 else near
        return f"{self.message} (at {where}: {near!r})" if near.strip() else f"{self.message} (at {where}, the end)"

    def _render(self) -> str:
        if not self.text:
            return self.message
        pos = max(0, min(self.pos, len(self.text)))
        line_start = self.text.rfind("\n", 0, pos) + 1
        line_end = self.text.find("\n", pos)
        line = self.text[line_start:len(self.text) if line_end < 0 else line_end]
        col = pos - line_start
        line_no = self.text.count("\n", 0, pos) + 1
        where = f"column {col + 1}" if "\n" not in self.text else f"line {line_no}, column {col + 1}"
        if len(line) > 100:  # show a window of a long line around the caret
            lo = max(0, col - 60)
            hi = min(len(line), lo + 100)
            line = ("..." if lo else "") + line[lo:hi] + ("..." if hi < len(line) else "")
            col = col - lo + (3 if lo else 0)
        return f"{self.message} (at {where})\n  {line}\n  {' ' * col}^"


class SpecShapeError(SpecError, ShapeError):
    """A spec whose sizes don't fit (e.g. the notes' (10 - 3 + 0)/2 + 1 = 4.5)."""

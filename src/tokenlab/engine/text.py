"""Token text from token bytes: UTF-8 that never shows a broken character.

Escaped forms for display (`visible`, `terminal_safe`) are presentation and live in tokenlab.render.
"""

from __future__ import annotations

import codecs


def escape_piece(piece: bytes) -> str:
    """A token's bytes as text; bytes that are not valid UTF-8 on their own become \\xNN escapes."""
    return piece.decode("utf-8", errors="backslashreplace")


class Utf8Stream:
    """Turns a stream of token byte pieces into text, holding bytes until a character completes.

    A token may end in the middle of a multi-byte character (byte-fallback tokens, split emoji); its
    text is then "" and the held bytes come out, completed, with the next token's text.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        """The text that became complete with this piece."""
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Whatever is still held, with broken sequences replaced by U+FFFD."""
        return self._decoder.decode(b"", final=True)

    @property
    def pending(self) -> bytes:
        """Bytes held back because their character is not complete yet."""
        return self._decoder.getstate()[0]

    def copy(self) -> Utf8Stream:
        """An independent stream in the same state (for branching)."""
        clone = Utf8Stream()
        clone._decoder.setstate(self._decoder.getstate())
        return clone

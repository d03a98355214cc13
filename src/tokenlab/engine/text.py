"""Token text: UTF-8 that never shows a broken character, and escaped forms for tables."""

from __future__ import annotations

import codecs

_VISIBLE = {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def escape_piece(piece: bytes) -> str:
    """A token's bytes as text; bytes that are not valid UTF-8 on their own become \\xNN escapes."""
    return piece.decode("utf-8", errors="backslashreplace")


def visible(text: str) -> str:
    """Text with whitespace and control characters made visible (for candidate tables)."""
    out = []
    for char in text:
        if char in _VISIBLE:
            out.append(_VISIBLE[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


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

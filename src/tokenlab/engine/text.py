"""Token text: UTF-8 that never shows a broken character, and escaped forms for tables."""

from __future__ import annotations

import codecs
import re

_VISIBLE = {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def escape_piece(piece: bytes) -> str:
    """A token's bytes as text; bytes that are not valid UTF-8 on their own become \\xNN escapes."""
    return piece.decode("utf-8", errors="backslashreplace")


def _is_control(char: str) -> bool:
    """C0 and C1 control characters and DEL: what a terminal may take as a command (ESC, CSI, BEL...)."""
    code = ord(char)
    return code < 32 or 127 <= code < 160


def visible(text: str) -> str:
    """Text with whitespace and control characters made visible (for candidate tables)."""
    out = []
    for char in text:
        if char in _VISIBLE:
            out.append(_VISIBLE[char])
        elif _is_control(char):
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Text for a terminal: control characters other than newline and tab shown as \\xNN, so none is obeyed.

    Token text, prompts and model metadata come from files a user did not write; an ESC in them could
    clear the screen, retitle the window or plant a link.
    """
    return _TERMINAL_UNSAFE.sub(lambda match: visible(match.group()), text)


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

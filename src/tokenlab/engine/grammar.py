"""Grammar constraints on llama.cpp's own grammar sampler: GBNF, a regex subset and JSON schemas.

Every constraint becomes a GBNF grammar and runs on `llama_sampler_init_grammar`:

- a GBNF text is used as is;
- a JSON schema goes through llama-cpp-python's converter (`llama_cpp.llama_grammar.json_schema_to_gbnf`,
  the Python twin of llama.cpp's `json_schema_to_grammar`);
- a regex goes through `regex_to_gbnf` below: Python's own regex parser reads the pattern, and each
  node becomes the GBNF construct with the same language (literals, classes, `.`, groups, alternation,
  repetition).  The whole generated text must match it (a full match).

`GrammarConstraint` follows the text: `at(prefix)` gives the constraint of the step after `prefix`
(the sampling pipeline's `TokenConstraint`), replaying only the tokens the grammar has not accepted yet,
and rebuilding the grammar's state from scratch when the path changed (a branch, a chosen token, a
loaded session).

A step's mask is exact and costs less than running the grammar over the whole vocabulary: what a
grammar accepts is closed under prefixes (a token is accepted only if its first byte is, llama.cpp
matching an incomplete UTF-8 character against the code points it can still become), so the grammar
first judges the 256 single-byte tokens, and then only the tokens whose first byte it accepted, plus
every token it judges apart from its text (end-of-generation and empty pieces).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import sys
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from tokenlab.engine.llama import EngineError

try:  # Python 3.11+
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

KIND_FLAGS = {"grammar": "--grammar", "regex": "--regex", "json_schema": "--json-schema"}
"""The command-line flag of each kind of constraint (named in error messages)."""


class GrammarError(EngineError):
    """A constraint that cannot be turned into a working grammar; str() is one line."""


# -- a regex as GBNF ----------------------------------------------------------------------------------

_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _,.:;!?/=+*&%$#@~'`<>(){}|")
_DIGITS = [(ord("0"), ord("9"))]
_WORD = [(ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("_"), ord("_")), (ord("a"), ord("z"))]
_SPACE = [(ord(c), ord(c)) for c in " \t\n\r\f\v"]
_CATEGORIES = {
    "CATEGORY_DIGIT": (_DIGITS, False),
    "CATEGORY_NOT_DIGIT": (_DIGITS, True),
    "CATEGORY_WORD": (_WORD, False),
    "CATEGORY_NOT_WORD": (_WORD, True),
    "CATEGORY_SPACE": (_SPACE, False),
    "CATEGORY_NOT_SPACE": (_SPACE, True),
}


def _char(code: int, *, in_class: bool) -> str:
    """One character for a GBNF string or class: plain when safe, else a hex escape."""
    char = chr(code)
    if char in _PLAIN and not (in_class and char in "-"):
        return char
    if code <= 0xFF:
        return f"\\x{code:02X}"
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def _class(ranges: Sequence[tuple[int, int]], negate: bool) -> str:
    body = "".join(
        _char(low, in_class=True) if low == high else f"{_char(low, in_class=True)}-{_char(high, in_class=True)}"
        for low, high in ranges
    )
    return f"[{'^' if negate else ''}{body}]"


def _unsupported(what: str) -> GrammarError:
    return GrammarError(f"--regex: {what} cannot be expressed as a grammar; use literals, classes, groups, "
                        "| and repetition (or write a GBNF grammar for --grammar)")


class _RegexConverter:
    """Turns the tree of Python's regex parser into one GBNF expression."""

    def __init__(self, pattern: str) -> None:
        try:
            self.tree = _sre_parse.parse(pattern)
        except re.error as exc:
            raise GrammarError(f"--regex {pattern!r} is not a valid regular expression: {exc}") from None
        if self.tree.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE) & ~re.UNICODE:
            raise _unsupported("an inline flag such as (?i)")

    def convert(self) -> str:
        items = list(self.tree)
        # anchors at the very ends only say what a full match means anyway
        if items and str(items[0][0]) == "AT" and str(items[0][1]) in ("AT_BEGINNING", "AT_BEGINNING_STRING"):
            items = items[1:]
        if items and str(items[-1][0]) == "AT" and str(items[-1][1]) in ("AT_END", "AT_END_STRING"):
            items = items[:-1]
        expression = self.sequence(items)
        if not expression:
            raise GrammarError("--regex matches only the empty text; give a pattern that generates something")
        return expression

    def sequence(self, items: Sequence[tuple[Any, Any]]) -> str:
        parts: list[str] = []
        literal: list[str] = []
        for op, value in items:
            if str(op) == "LITERAL":
                literal.append(_char(value, in_class=False) if chr(value) not in '"\\' else f"\\x{value:02X}")
                continue
            if literal:
                parts.append(f'"{"".join(literal)}"')
                literal = []
            parts.append(self.node(str(op), value))
        if literal:
            parts.append(f'"{"".join(literal)}"')
        return " ".join(part for part in parts if part)

    def node(self, op: str, value: Any) -> str:
        if op == "NOT_LITERAL":
            return _class([(value, value)], True)
        if op == "ANY":
            return "[^\\x0A]"  # as Python's '.', without DOTALL
        if op == "IN":
            return self.char_set(value)
        if op == "BRANCH":
            return "(" + " | ".join(self.sequence(list(branch)) or '""' for branch in value[1]) + ")"
        if op == "SUBPATTERN":
            _group, add_flags, del_flags, pattern = value
            if add_flags or del_flags:
                raise _unsupported("a scoped flag such as (?i:...)")
            return "(" + (self.sequence(list(pattern)) or '""') + ")"
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, pattern = value
            inner = self.sequence(list(pattern))
            if not inner:
                return ""
            inner = f"({inner})"
            if high == _sre.MAXREPEAT:
                return f"{inner}*" if low == 0 else f"{inner}+" if low == 1 else f"{inner}{{{low},}}"
            if (low, high) == (0, 1):
                return f"{inner}?"
            return f"{inner}{{{low}}}" if low == high else f"{inner}{{{low},{high}}}"
        if op == "ATOMIC_GROUP":
            return "(" + self.sequence(list(value)) + ")"
        names = {"AT": "an anchor or word boundary inside the pattern", "GROUPREF": "a back-reference",
                 "GROUPREF_EXISTS": "a conditional group", "ASSERT": "a lookahead or lookbehind",
                 "ASSERT_NOT": "a negative lookahead or lookbehind"}
        raise _unsupported(names.get(op, op.lower()))

    def char_set(self, items: Sequence[tuple[Any, Any]]) -> str:
        negate = False
        ranges: list[tuple[int, int]] = []
        for op, value in items:
            name = str(op)
            if name == "NEGATE":
                negate = True
            elif name == "LITERAL":
                ranges.append((value, value))
            elif name == "RANGE":
                ranges.append(tuple(value))  # type: ignore[arg-type]
            elif name == "CATEGORY":
                category, negated = _CATEGORIES.get(str(value), (None, False))
                if category is None:
                    raise _unsupported(str(value).lower())
                if negated:
                    if len(items) > 1:
                        raise _unsupported("a negated class such as \\D inside [...]")
                    return _class(category, not negate)
                ranges.extend(category)
            else:
                raise _unsupported(name.lower())
        return _class(ranges, negate)


def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar whose language is the texts that fully match `pattern` (GrammarError if it cannot be)."""
    return f"root ::= {_RegexConverter(pattern).convert()}\n"


def schema_to_gbnf(schema_text: str) -> str:
    """A GBNF grammar for a JSON schema, by llama-cpp-python's converter (GrammarError for a bad schema)."""
    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as exc:
        raise GrammarError(f"--json-schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarError(f"--json-schema must be a JSON object (a schema), got {type(schema).__name__}")
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - the converter raises whatever its parts raise
        raise GrammarError(f"--json-schema cannot be turned into a grammar: {exc!r}") from None


def gbnf_for(kind: str, text: str) -> str:
    """The GBNF grammar of a constraint given as ("grammar" | "regex" | "json_schema", source text)."""
    if kind == "grammar":
        return text
    if kind == "regex":
        return regex_to_gbnf(text)
    if kind == "json_schema":
        return schema_to_gbnf(text)
    raise ValueError(f"unknown constraint kind {kind!r}")


# -- llama.cpp's grammar sampler -----------------------------------------------------------------------


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what C code writes to file descriptor 2 (llama.cpp prints grammar parse errors there)."""
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))


def _parse_problem(gbnf: str, printed: str) -> str:
    """What llama.cpp disliked about a grammar, in a few words (from what it printed, when we have it)."""
    for line in printed.splitlines():
        if "error parsing grammar:" in line:
            return line.split("error parsing grammar:", 1)[1].strip()
        if "left recursion" in line:
            return "a rule is left-recursive (rule ::= rule ...), which llama.cpp cannot run; rewrite it"
    if not re.search(r"^\s*root\s*::=", gbnf, re.MULTILINE):
        return "it has no 'root' rule (the text starts at root ::= ...)"
    return "llama.cpp rejected it (a syntax error, an undefined rule or a left-recursive rule)"


def _rejected(kind: str, gbnf: str, printed: str) -> GrammarError:
    flag = KIND_FLAGS.get(kind, kind)
    what = "the grammar" if kind == "grammar" else f"the grammar made from {flag}"
    return GrammarError(f"{flag}: {what} does not parse: {_parse_problem(gbnf, printed)}")


def check_constraint_text(kind: str, text: str) -> str:
    """The constraint's GBNF, parsed once by llama.cpp (no model needed); GrammarError in one line if it fails.

    llama.cpp prints parse errors on file descriptor 2, which is captured here for the message: call it
    before a full-screen app owns the terminal (the lab draws on that descriptor).
    """
    import llama_cpp

    gbnf = gbnf_for(kind, text)
    with _stderr_captured() as printed:
        sampler = llama_cpp.llama_sampler_init_grammar(None, gbnf.encode("utf-8"), b"root")
    if not sampler:
        raise _rejected(kind, gbnf, "".join(printed))
    llama_cpp.llama_sampler_free(sampler)
    return gbnf


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])

_ALWAYS = -1
"""First-byte class of the tokens the grammar always judges itself (end of generation, empty piece)."""


class _ByteIndex:
    """For one vocabulary: each token's first byte, and a token spelled by each single byte."""

    def __init__(self, engine: Any) -> None:
        n_vocab = int(engine.n_vocab)
        first = np.full(n_vocab, _ALWAYS, dtype=np.int16)
        single = np.full(256, -1, dtype=np.int64)
        for token_id in range(n_vocab):
            piece = engine.piece(token_id)
            if not piece or engine.is_eog(token_id):
                continue
            first[token_id] = piece[0]
            if len(piece) == 1 and single[piece[0]] < 0:
                single[piece[0]] = token_id
        # a byte no single token spells cannot be asked about: its tokens are always judged in full
        unknown = np.flatnonzero(single < 0)
        first[np.isin(first, unknown)] = _ALWAYS
        self.first_byte = first
        self.byte_bytes = np.flatnonzero(single >= 0)
        """The byte values a single token spells."""
        self.byte_tokens = single[self.byte_bytes].astype(np.int32)
        """The token spelling each of `byte_bytes`."""
        self.always = np.flatnonzero(first == _ALWAYS).astype(np.int32)
        order = np.argsort(first, kind="stable")
        self._order = order.astype(np.int32)
        self._starts = np.searchsorted(first[order], np.arange(-1, 257))

    def tokens_starting_with(self, byte_values: np.ndarray) -> np.ndarray:
        """Ids of the tokens whose first byte is one of `byte_values`, plus those always judged in full."""
        parts = [self.always]
        for value in byte_values.tolist():
            start, stop = self._starts[value + 1], self._starts[value + 2]
            parts.append(self._order[start:stop])
        return np.concatenate(parts)


_BYTE_INDEXES: weakref.WeakKeyDictionary[Any, _ByteIndex] = weakref.WeakKeyDictionary()


def _byte_index(engine: Any) -> _ByteIndex:
    """The engine's byte index (built once per engine: it reads every token's piece)."""
    index = _BYTE_INDEXES.get(engine)
    if index is None:
        index = _BYTE_INDEXES[engine] = _ByteIndex(engine)
    return index


class GrammarConstraint:
    """A GBNF grammar on llama.cpp's grammar sampler, for one engine's vocabulary, following a token path."""

    def __init__(self, engine: Any, kind: str, text: str) -> None:
        if getattr(engine, "remote", False):
            raise GrammarError(f"{KIND_FLAGS.get(kind, kind)} needs a local model: a server's top K cannot "
                               "be constrained here; drop --engine or the constraint")
        import llama_cpp

        self._lib = llama_cpp
        self.kind = kind
        self.source = text
        self.gbnf = gbnf_for(kind, text)
        self.n_vocab = int(engine.n_vocab)
        self._engine = engine
        # not captured: the lab may own file descriptor 2 (the commands check the text first, see
        # check_constraint_text, so llama.cpp has nothing to print here)
        sampler = llama_cpp.llama_sampler_init_grammar(engine.vocab, self.gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise _rejected(kind, self.gbnf, "")
        self._sampler = sampler
        self._accepted: list[int] = []
        self._bytes = _byte_index(engine)
        self._single = np.zeros(1, dtype=_TOKEN_DATA)
        self._masks: dict[tuple[int, ...], np.ndarray] = {}

    # -- the grammar's state --------------------------------------------------------------------------

    def _apply(self, data: np.ndarray) -> np.ndarray:
        """Run the grammar sampler over `data` (token records) in place; True where a token stays allowed."""
        array = self._lib.llama_token_data_array(
            data=data.ctypes.data_as(self._lib.llama_token_data_p), size=data.shape[0], selected=-1, sorted=False,
        )
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(array))
        allowed: np.ndarray = data["logit"] > -np.inf
        return allowed

    def _allows_now(self, token_id: int) -> bool:
        self._single["id"] = token_id
        self._single["logit"] = 0.0
        return bool(self._apply(self._single)[0])

    def sync(self, prefix: Sequence[int]) -> None:
        """Bring the grammar to the state after `prefix` (accepting only what it lacks; replaying after a change).

        A token the grammar does not allow where it stands raises GrammarError (llama.cpp would abort on it).
        """
        prefix = list(prefix)
        done = len(self._accepted)
        if prefix[:done] != self._accepted:
            self._lib.llama_sampler_reset(self._sampler)
            self._accepted = []
            done = 0
        for position in range(done, len(prefix)):
            token_id = int(prefix[position])
            if not 0 <= token_id < self.n_vocab or not self._allows_now(token_id):
                self._lib.llama_sampler_reset(self._sampler)
                self._accepted = []
                raise GrammarError(
                    f"generated token {position} ({self._engine.token_text(token_id)!r}) does not follow the "
                    f"{self.kind.replace('_', ' ')} constraint"
                )
            self._lib.llama_sampler_accept(self._sampler, token_id)
            self._accepted.append(token_id)

    def mask_after(self, prefix: Sequence[int]) -> np.ndarray:
        """A read-only boolean mask over the vocabulary: the tokens the grammar allows after `prefix`."""
        key = tuple(int(t) for t in prefix)
        mask = self._masks.get(key)
        if mask is None:
            self.sync(key)
            index = self._bytes
            probe = np.zeros(index.byte_tokens.shape[0], dtype=_TOKEN_DATA)
            probe["id"] = index.byte_tokens
            first_bytes = index.byte_bytes[self._apply(probe)]
            ids = index.tokens_starting_with(first_bytes)
            if ids.shape[0] > self.n_vocab // 2:  # a loose grammar: in id order, the way llama.cpp walks it
                ids = np.arange(self.n_vocab, dtype=np.int32)
            data = np.zeros(ids.shape[0], dtype=_TOKEN_DATA)
            data["id"] = ids
            mask = np.zeros(self.n_vocab, dtype=bool)
            mask[ids[self._apply(data)]] = True
            mask.flags.writeable = False
            if len(self._masks) >= 8:  # the frontier and a few inspected steps; never the whole history
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = mask
        return mask

    def at(self, prefix: Sequence[int]) -> StepConstraint:
        """The constraint of the step after `prefix` (generated tokens only, not the prompt)."""
        return StepConstraint(self, tuple(int(t) for t in prefix))

    def close(self) -> None:
        """Free llama.cpp's sampler."""
        sampler, self._sampler = getattr(self, "_sampler", None), None
        if sampler:
            self._lib.llama_sampler_free(sampler)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class StepConstraint:
    """The grammar at one step (a `tokenlab.sampling.constraint.TokenConstraint`): its mask, computed once."""

    def __init__(self, grammar: GrammarConstraint, prefix: tuple[int, ...]) -> None:
        self.grammar = grammar
        self.prefix = prefix
        self._mask: np.ndarray | None = None

    def allowed(self, n_vocab: int) -> np.ndarray:
        """The allowed-token mask at this step."""
        if self._mask is None:
            self._mask = self.grammar.mask_after(self.prefix)
        if self._mask.shape[0] != n_vocab:
            raise ValueError(f"the grammar covers {self._mask.shape[0]} tokens, the row {n_vocab}")
        return self._mask

    def allows(self, token_id: int) -> bool:
        """Whether `token_id` may come at this step."""
        return bool(self.allowed(self.grammar.n_vocab)[token_id])

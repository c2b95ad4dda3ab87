"""containerd's filter language: parse a filter string, then match objects through adaptors.

List calls (``Containers.List``, ``Images.List``, ``Snapshots.List``, ``Content.List``,
``Leases.List``, ``Events.Subscribe``, ``Introspection.Plugins``...) carry filters in this
syntax; ctrpy accepts exactly what containerd accepts and reports errors in its words.

Syntax::

    filters   := selectors                  (one string; "" matches everything)
    selectors := selector ("," selector)*   (all selectors must match: AND)
    selector  := fieldpath [operator value]
    fieldpath := field ("." field)*
    field     := [A-Za-z0-9_]+ | "double-quoted"
    operator  := "==" | "!=" | "~="
    value     := run of printable characters up to "," or space | "double-quoted"
                 | /slash-quoted/ | |pipe-quoted|    (the last two only after "~=")

A repeated ``filters`` field is the OR of its strings (:func:`parse_all`). Quoted strings use
Go's escapes (``\\n``, ``\\"``, ``\\x41``, ``\\u00e9``, ``\\101``...). Label keys with other
characters must be quoted: ``labels."containerd.io/gc.ref.content"==sha256:...``. Unquoted
dots split the path, but the label adaptors join the rest back with dots, so ``labels.a.b`` is
the label ``a.b``. Spaces may stand before a field, an operator or a value, nowhere else.

Meaning of a selector, given the adaptor's ``(value, present)`` for its path:

- ``path``      -- present
- ``path==v``   -- present and value == v
- ``path!=v``   -- value != v (an absent field has the value "")
- ``path~=re``  -- the regular expression finds a match anywhere in value (absent: in "")

Regular expressions use Go's RE2 syntax. They run on Python's :mod:`re` with ``re.ASCII``
(RE2's ``\\d``, ``\\w``, ``\\s`` and ``\\b`` are ASCII); ``\\z`` and ``(?<name>...)`` are
translated, POSIX classes like ``[[:alpha:]]`` are expanded, and constructs RE2 lacks (look-
around, backreferences, atomic groups, possessive quantifiers, ``\\Z``) are rejected.
``\\pL``-style classes, negated POSIX classes and ``\\Q...\\E`` are not supported. Unlike
containerd, which compiles patterns lazily and silently matches nothing, a bad pattern is an
InvalidArgument at parse time.

Errors look like containerd's (positions count characters, not bytes)::

    filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated: invalid
    argument

Fields each object exposes (the ``*_adaptor`` builders below)::

    container  id, image, runtime.name, snapshotter(*), labels.<key>
    image      name, target.digest, target.mediatype, labels.<key>, annotations.<key>
    namespace  name, labels.<key>
    lease      id, labels.<key>
    content    digest, size(*), labels.<key>        content status: ref
    snapshot   kind (active|view|committed), name, parent, labels.<key>
    plugin     type, id                             event envelope: namespace, topic, event.*

Fields marked (*) are ctrpy additions; containerd 1.6 reports them absent. Empty strings count
as absent, except for a snapshot's name and parent and a content digest, which are always
present. A ``labels.<key>`` path is absent when the object has no such label.
"""

from __future__ import annotations

import enum
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from ctrpy.errors import InvalidArgument

Adaptor = Callable[[Sequence[str]], tuple[str, bool]]
"""Maps a field path to ``(value, present)`` for one object."""


class Filter(Protocol):
    """Something that decides whether one object, seen through an adaptor, matches."""

    def match(self, adaptor: Adaptor) -> bool:
        """True when the object behind ``adaptor`` satisfies this filter."""
        ...


class Operator(enum.Enum):
    """A selector's comparison."""

    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True)
class Always:
    """Matches every object: the empty filter."""

    def match(self, adaptor: Adaptor) -> bool:
        """Always true."""
        return True


ALWAYS: Final = Always()


@dataclass(frozen=True)
class AnyOf:
    """Matches when any of its filters matches (a List call's repeated ``filters``)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        """True when one of the filters matches."""
        return any(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True)
class AllOf:
    """Matches when all of its filters match (the selectors of one filter string)."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        """True when every filter matches."""
        return all(f.match(adaptor) for f in self.filters)


@dataclass(frozen=True)
class Selector:
    """One ``fieldpath [operator value]`` term."""

    fieldpath: tuple[str, ...]
    operator: Operator
    value: str = ""
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def match(self, adaptor: Adaptor) -> bool:
        """Apply the operator to the adaptor's value for this path (see the module docstring)."""
        value, present = adaptor(self.fieldpath)
        if self.operator is Operator.PRESENT:
            return present
        if self.operator is Operator.EQUAL:
            return present and value == self.value
        if self.operator is Operator.NOT_EQUAL:
            return value != self.value
        assert self.pattern is not None
        return self.pattern.search(value) is not None


def parse(expression: str) -> Filter:
    """Parse one filter string (selectors joined by commas, all must match).

    The empty string matches everything. Raises InvalidArgument, pointing at the offending
    position, on a syntax error or a regular expression that does not compile.
    """
    if expression == "":
        return ALWAYS
    return _Parser(expression).parse()


def parse_all(expressions: Iterable[str]) -> Filter:
    """Parse each string and return their OR.

    No strings at all, or any empty string among them, matches everything (as in containerd,
    where an empty string parses to "always"). Every string is parsed, so a syntax error in any
    of them raises InvalidArgument. A lone string counts as one expression, not as characters.
    """
    if isinstance(expressions, str):
        expressions = (expressions,)
    parsed = tuple(parse(e) for e in expressions)
    if not parsed or any(isinstance(f, Always) for f in parsed):
        return ALWAYS
    return parsed[0] if len(parsed) == 1 else AnyOf(parsed)


# --- scanner ---------------------------------------------------------------------------------

_EOF: Final = ""  # next() at the end of input
_ILLEGAL: Final = "\x00"  # next() on a character the scanner refuses (NUL, lone surrogate)
_QUOTES: Final = frozenset('/|"')
_SEPARATORS: Final = frozenset(",.")
_OPERATOR_CHARS: Final = frozenset("=!~")
_FIELD_CHARS: Final = frozenset("_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SIMPLE_ESCAPES: Final = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_OCTAL: Final = frozenset("01234567")


class _Tok(enum.Enum):
    EOF = enum.auto()
    QUOTED = enum.auto()
    VALUE = enum.auto()
    FIELD = enum.auto()
    SEPARATOR = enum.auto()
    OPERATOR = enum.auto()
    ILLEGAL = enum.auto()
    CHAR = enum.auto()  # any other single character; the parser reports it


def _is_space(ch: str) -> bool:
    # Go's unicode.IsSpace: Python's isspace() also counts the four ASCII information separators.
    return ch != _EOF and ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


def _is_value_char(ch: str) -> bool:
    # Go's graphic characters (letters, marks, numbers, punctuation, symbols) minus "," and spaces.
    if ch == _EOF or ch == "," or _is_space(ch):
        return False
    return unicodedata.category(ch)[0] in "LMNPS"


def _digit_value(ch: str) -> int:
    return int(ch, 16) if ch != _EOF and ch in _HEX else 16


class _Scanner:
    """Splits the input into tokens; ``pos`` is where the last character read starts."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.ppos = 0  # just past the last character read
        self.value = False  # after an operator, a bare run of characters is a value
        self.err = ""  # the first problem met; reported with an ILLEGAL token

    def error(self, message: str) -> None:
        if not self.err:
            self.err = message

    def next(self) -> str:
        self.pos = self.ppos
        if self.ppos >= len(self.text):
            return _EOF
        ch = self.text[self.ppos]
        self.ppos += 1
        if ch == "\x00":
            self.error("unexpected null")
            return _ILLEGAL
        if "\ud800" <= ch <= "\udfff":
            self.error("rune error")
            return _ILLEGAL
        return ch

    def peek(self) -> str:
        pos, ppos = self.pos, self.ppos
        ch = self.next()
        self.pos, self.ppos = pos, ppos
        return ch

    def scan(self) -> tuple[int, _Tok, str]:
        ch = self.next()
        while _is_space(ch):
            ch = self.next()
        pos = self.pos
        if ch == _EOF:
            return pos, _Tok.EOF, ""
        if ch == _ILLEGAL:
            return pos, _Tok.ILLEGAL, ""
        if ch in _QUOTES:
            ok = self._scan_quoted(ch)
            return pos, _Tok.QUOTED if ok else _Tok.ILLEGAL, self.text[pos : self.ppos]
        if ch in _SEPARATORS:
            self.value = False
            return pos, _Tok.SEPARATOR, ch
        if ch in _OPERATOR_CHARS:
            self._skip_while(lambda c: c in _OPERATOR_CHARS)
            self.value = True
            return pos, _Tok.OPERATOR, self.text[pos : self.ppos]
        if self.value:
            # The first character needs no test: anything that got here starts the value.
            self._skip_while(_is_value_char)
            self.value = False
            return pos, _Tok.VALUE, self.text[pos : self.ppos]
        if ch in _FIELD_CHARS:
            self._skip_while(lambda c: c in _FIELD_CHARS)
            return pos, _Tok.FIELD, self.text[pos : self.ppos]
        return pos, _Tok.CHAR, ch

    def _skip_while(self, accept: Callable[[str], bool]) -> None:
        while (ch := self.peek()) != _EOF and accept(ch):
            self.next()

    def _scan_quoted(self, quote: str) -> bool:
        legal = True
        ch = self.next()
        while ch != quote:
            if ch in ("\n", _EOF, _ILLEGAL):
                self.error("quoted literal not terminated")
                return False
            if ch == "\\":
                ch, ok = self._scan_escape(quote)
                legal = legal and ok
            else:
                ch = self.next()
        return legal

    def _scan_escape(self, quote: str) -> tuple[str, bool]:
        ch = self.next()
        if ch == quote or ch in _SIMPLE_ESCAPES:
            return self.next(), True
        if ch in _OCTAL:
            return self._scan_digits(ch, 8, 3)
        counts = {"x": 2, "u": 4, "U": 8}
        if ch in counts:
            return self._scan_digits(self.next(), 16, counts[ch])
        self.error("illegal escape sequence")
        return ch, False

    def _scan_digits(self, ch: str, base: int, count: int) -> tuple[str, bool]:
        while count > 0 and _digit_value(ch) < base:
            ch = self.next()
            count -= 1
        if count > 0:
            self.error("illegal numeric escape sequence")
            return ch, False
        return ch, True


class _QuoteError(ValueError):
    pass


def _unquote(token: str) -> str:
    """Decode a quoted token (quotes included) with Go's string escapes.

    ``\\x`` and octal escapes give raw bytes, as in Go; bytes that are not UTF-8 come back as
    lone surrogates (``surrogateescape``) and so never equal a real label.
    """
    quote, body = token[0], token[1:-1]
    if "\\" not in body and quote not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == quote:
            raise _QuoteError
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        esc, i = body[i + 1 : i + 2], i + 2
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
        elif esc in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits, i = body[i : i + width], i + width
            if len(digits) < width or not set(digits) <= _HEX:
                raise _QuoteError
            code = int(digits, 16)
            if esc == "x":
                out.append(code)
            elif code > 0x10FFFF:
                raise _QuoteError
            else:
                # Go writes U+FFFD for a surrogate code point.
                out += chr(0xFFFD if 0xD800 <= code <= 0xDFFF else code).encode()
        elif esc in _OCTAL and esc != "":
            digits, i = body[i : i + 2], i + 2
            if len(digits) < 2 or not set(digits) <= _OCTAL or int(esc + digits, 8) > 255:
                raise _QuoteError
            out.append(int(esc + digits, 8))
        elif esc in ("'", '"', "|", "/") and esc == quote:
            out += esc.encode()
        else:
            raise _QuoteError
    return out.decode("utf-8", "surrogateescape")


# --- parser ----------------------------------------------------------------------------------


def _go_quote(text: str) -> str:
    """Roughly Go's %q: double quotes, backslash escapes."""
    return json.dumps(text, ensure_ascii=False)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.scanner = _Scanner(text)

    def error(self, pos: int, message: str) -> InvalidArgument:
        text = self.text
        if pos < len(text):
            where = f"[{text[:pos]} >|{text[pos]}|< {text[pos + 1:]}]"
        else:
            where = f"[{text}]"
        return InvalidArgument(f"filters: parse error: {where}: {message}")

    def parse(self) -> Filter:
        selectors = [self.selector()]
        while True:
            ch = self.scanner.peek()
            if ch == ",":
                self.scanner.scan()
                selectors.append(self.selector())
            elif ch == _EOF:
                return AllOf(tuple(selectors))
            else:
                shown = "\ufffd" if ch == _ILLEGAL else ch
                raise self.error(self.scanner.ppos, f"unexpected input: {shown}")

    def selector(self) -> Selector:
        path = self.fieldpath()
        if self.scanner.peek() in (",", _EOF):
            return Selector(path, Operator.PRESENT)
        op = self.operator()
        pos, value = self.value(alternative_quotes=op is Operator.MATCHES)
        if op is not Operator.MATCHES:
            return Selector(path, op, value)
        try:
            pattern = compile_regexp(value)
        except ValueError as e:
            raise self.error(pos, f"invalid regular expression {_go_quote(value)}: {e}") from None
        return Selector(path, op, value, pattern)

    def fieldpath(self) -> tuple[str, ...]:
        fields = [self.field()]
        while self.scanner.peek() == ".":
            self.scanner.scan()
            fields.append(self.field())
        return tuple(fields)

    def field(self) -> str:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.FIELD:
            return text
        if tok is _Tok.QUOTED:
            return self.unquote(pos, text, alternative_quotes=False)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, "expected field or quoted")

    def operator(self) -> Operator:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.OPERATOR:
            if text in ("==", "!=", "~="):
                return Operator(text)
            raise self.error(pos, f"unsupported operator {_go_quote(text)}")
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, *, alternative_quotes: bool) -> tuple[int, str]:
        pos, tok, text = self.scanner.scan()
        if tok in (_Tok.VALUE, _Tok.FIELD):
            return pos, text
        if tok is _Tok.QUOTED:
            return pos, self.unquote(pos, text, alternative_quotes=alternative_quotes)
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, "expected value or quoted")

    def unquote(self, pos: int, token: str, *, alternative_quotes: bool) -> str:
        # /.../ and |...| quoting exists for regular expressions only.
        if not alternative_quotes and token[0] != '"':
            raise self.error(pos, "invalid quote encountered")
        try:
            return _unquote(token)
        except _QuoteError:
            raise self.error(pos, "unquoting failed: quote syntax error") from None


# --- regular expressions ---------------------------------------------------------------------

_POSIX_CLASSES: Final = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z",
    "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}  # fmt: skip
_UNSUPPORTED_GROUPS: Final = ("(?=", "(?!", "(?<=", "(?<!", "(?>", "(?P=", "(?(", "(?#")
_REPEAT: Final = re.compile(r"\{\d+(?:,\d*)?\}")
_POSIX: Final = re.compile(r"\[:(\^?)([a-z]+):\]")


def compile_regexp(pattern: str) -> re.Pattern[str]:
    """Compile an RE2-syntax pattern with :mod:`re`; raises ValueError saying what is wrong."""
    try:
        return re.compile(_translate_re2(pattern), re.ASCII)
    except re.error as e:
        raise ValueError(str(e)) from None


def _translate_re2(pattern: str) -> str:
    """Rewrite the RE2 spellings :mod:`re` lacks and refuse what RE2 does not have."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = after_repeat = False
    while i < n:
        c = pattern[i]
        repeat = False
        if c == "\\":
            esc = pattern[i + 1 : i + 2]
            if esc != "" and (esc in "Z123456789" and not in_class):
                raise ValueError(f"invalid escape sequence: `\\{esc}`")
            out.append(r"\Z" if esc == "z" and not in_class else pattern[i : i + 2])
            i += 2
        elif in_class:
            posix = _POSIX.match(pattern, i)
            if posix and posix.group(2) in _POSIX_CLASSES and not posix.group(1):
                out.append(_POSIX_CLASSES[posix.group(2)])
                i = posix.end()
                continue
            if posix:
                raise ValueError(f"invalid character class range: `{posix.group(0)}`")
            in_class = c != "]"
            # Literal in RE2, but re warns about possible future set syntax ([, &&, ~~, ||, --).
            literal = c in "[&~|" or (c == "-" and pattern[i - 1] == "-")
            out.append("\\" + c if literal else c)
            i += 1
        elif c == "[":
            # A "]" right after "[" or "[^" is a literal in both dialects.
            start = i + 1 + (pattern[i + 1 : i + 2] == "^")
            start += pattern[start : start + 1] == "]"
            out.append(pattern[i:start])
            in_class, i = True, start
        elif c == "(" and pattern.startswith("(?", i):
            bad = next((g for g in _UNSUPPORTED_GROUPS if pattern.startswith(g, i)), None)
            if bad is not None:
                raise ValueError(f"invalid or unsupported Perl syntax: `{bad}`")
            named = pattern.startswith("(?<", i)
            out.append("(?P<" if named else "(?")
            i += 3 if named else 2
        elif c == "{" and (m := _REPEAT.match(pattern, i)):
            out.append(m.group(0))
            i, repeat = m.end(), True
        else:
            if c == "+" and after_repeat:
                raise ValueError("invalid nested repetition operator")
            # A brace that does not start {n}, {n,} or {n,m} is literal in RE2, not in re ({,m}).
            out.append("\\{" if c == "{" else c)
            i += 1
            repeat = c in "*+?"
        after_repeat = repeat
    return "".join(out)


# --- adaptors --------------------------------------------------------------------------------


def adapt_labels(labels: Mapping[str, str], rest: Sequence[str]) -> tuple[str, bool]:
    """Look up ``labels.<key>``: ``rest`` is the path after ``labels``, joined back with dots."""
    key = ".".join(rest)
    if key in labels:
        return labels[key], True
    return "", False


def _adaptor(
    fields: Mapping[tuple[str, ...], str],
    maps: Mapping[str, Mapping[str, str] | None],
    nested: Mapping[str, Adaptor] | None = None,
) -> Adaptor:
    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return "", False
        if path[0] in maps:
            return adapt_labels(maps[path[0]] or {}, path[1:])
        if nested and path[0] in nested:
            return nested[path[0]](path[1:])
        key = tuple(path)
        if key in fields:
            return fields[key], True
        return "", False

    return field


def _present(fields: Mapping[tuple[str, ...], str]) -> dict[tuple[str, ...], str]:
    """Keep the non-empty values: containerd reports an empty string as absent."""
    return {k: v for k, v in fields.items() if v}


def adaptor_from_fields(
    fields: Mapping[str, str], labels: Mapping[str, str] | None = None
) -> Adaptor:
    """An adaptor over plain values: each key of ``fields`` is a dotted path (``"runtime.name"``)
    that is present with its value; with ``labels``, ``labels.<key>`` paths look there."""
    by_path = {tuple(k.split(".")): v for k, v in fields.items()}
    return _adaptor(by_path, {} if labels is None else {"labels": labels})


def container_adaptor(
    id: str, image: str, runtime_name: str, snapshotter: str, labels: Mapping[str, str]
) -> Adaptor:
    """Fields of a container: id, image, runtime.name, snapshotter, labels.<key>."""
    values = {("id",): id, ("image",): image, ("runtime", "name"): runtime_name}
    return _adaptor(_present(values | {("snapshotter",): snapshotter}), {"labels": labels})


def image_adaptor(
    name: str,
    target_digest: str,
    target_media_type: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> Adaptor:
    """Fields of an image: name, target.digest, target.mediatype, labels.<key>, annotations.<key>
    (the target descriptor's annotations)."""
    values = {("name",): name, ("target", "digest"): target_digest}
    values[("target", "mediatype")] = target_media_type
    return _adaptor(_present(values), {"labels": labels, "annotations": annotations})


def namespace_adaptor(name: str, labels: Mapping[str, str]) -> Adaptor:
    """Fields of a namespace: name, labels.<key>."""
    return _adaptor(_present({("name",): name}), {"labels": labels})


def lease_adaptor(id: str, labels: Mapping[str, str]) -> Adaptor:
    """Fields of a lease: id, labels.<key>."""
    return _adaptor(_present({("id",): id}), {"labels": labels})


def content_adaptor(digest: str, size: int, labels: Mapping[str, str]) -> Adaptor:
    """Fields of a content blob: digest (always present), size (decimal), labels.<key>."""
    return _adaptor({("digest",): digest, ("size",): str(size)}, {"labels": labels})


def content_status_adaptor(ref: str) -> Adaptor:
    """Fields of an ingest (Content.ListStatuses): ref (always present)."""
    return _adaptor({("ref",): ref}, {})


_SNAPSHOT_KINDS: Final = frozenset({"active", "view", "committed"})


def snapshot_adaptor(name: str, parent: str, kind: str, labels: Mapping[str, str]) -> Adaptor:
    """Fields of a snapshot: name and parent (always present), kind, labels.<key>.

    ``kind`` is ``"active"``, ``"view"`` or ``"committed"`` (any case); anything else makes the
    ``kind`` field absent.
    """
    values: dict[tuple[str, ...], str] = {("name",): name, ("parent",): parent}
    if kind.lower() in _SNAPSHOT_KINDS:
        values[("kind",)] = kind.lower()
    return _adaptor(values, {"labels": labels})


def plugin_adaptor(type: str, id: str) -> Adaptor:
    """Fields of a plugin (Introspection.Plugins): type, id."""
    return _adaptor(_present({("type",): type, ("id",): id}), {})


def envelope_adaptor(namespace: str, topic: str, event: Adaptor | None = None) -> Adaptor:
    """Fields of an event envelope: namespace, topic, and ``event.*`` handed to ``event``
    (absent when there is no event adaptor)."""
    fields = _present({("namespace",): namespace, ("topic",): topic})
    return _adaptor(fields, {}, {"event": event} if event is not None else None)

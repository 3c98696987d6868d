"""The output side of iproute2, transcribed: lib/json_print.c and lib/json_writer.c.

iproute2 prints every object once, through calls like
``print_uint(PRINT_ANY, "index", "\\t index %u", idx)``: in text mode the format
is printed, in ``-j`` mode the key/value goes to a streaming JSON writer. The
printers in node/tc are written the same way, so text and JSON stay in step and
keep iproute2's quirks (keys printed only in one mode, trailing spaces, the
``-p`` layout of json_writer.c).

Here the text argument is already formatted (Python has f-strings); the value
argument is what JSON gets.
"""

from __future__ import annotations

from typing import Any

PRINT_FP = 1  # text only
PRINT_JSON = 2  # JSON only
PRINT_ANY = 3  # both

_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f", "\b": "\\b", "\\": "\\\\",
            '"': '\\"', "'": "\\'"}


class JsonWriter:
    """json_writer.c: commas by a separator state, ``-p`` pretty layout with
    4-space indentation, a newline after the outermost value."""

    def __init__(self, pretty: bool) -> None:
        self.pretty = pretty
        self.depth = 0
        self.sep = ""
        self.parts: list[str] = []

    def _eol(self) -> None:
        if self.pretty:
            self.parts.append("\n" + "    " * self.depth)

    def _eor(self) -> None:
        if self.sep:
            self.parts.append(self.sep)
        self.sep = ","

    def name(self, name: str) -> None:
        self._eor()
        self._eol()
        self.sep = ""
        self.parts.append(_quote(name) + (": " if self.pretty else ":"))

    def begin(self, char: str) -> None:
        self._eor()
        self.parts.append(char)
        self.depth += 1
        self.sep = ""

    def end(self, char: str) -> None:
        self.depth -= 1
        if self.sep:
            self._eol()
        self.parts.append(char)
        self.sep = ","

    def raw(self, text: str) -> None:
        self._eor()
        self.parts.append(text)


def _quote(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'


class Out:
    """One command's stdout, in text or JSON (``new_json_obj`` .. ``delete_json_obj``)."""

    def __init__(self, json: bool = False, pretty: bool = False, oneline: bool = False) -> None:
        self.json = json
        self.sl = "\\" if oneline else "\n"  # _SL_
        self._text: list[str] = []
        self._jw: JsonWriter | None = None
        self._done: list[str] = []
        self.pretty = pretty

    # ------------------------------------------------------------ framing
    def new_json_obj(self) -> None:
        if self.json:
            self._jw = JsonWriter(self.pretty)
            self._jw.begin("[")

    def delete_json_obj(self) -> None:
        jw = self._jw
        if jw is not None:
            jw.end("]")
            self._done.append("".join(jw.parts) + "\n")
            self._jw = None

    def getvalue(self) -> str:
        return "".join(self._text) + "".join(self._done)

    def _ctx(self, kind: int) -> tuple[bool, bool]:
        """(to JSON, to text) for a PRINT_* kind, as _IS_JSON/_IS_FP_CONTEXT."""
        if self._jw is not None:
            return bool(kind & PRINT_JSON), False
        return False, bool(kind & PRINT_FP)

    # ------------------------------------------------------------ values
    def _json_value(self, key: str | None, literal: str) -> None:
        jw = self._jw
        assert jw is not None
        if key is not None:
            jw.name(key)
        jw.raw(literal)

    def fp(self, text: str) -> None:
        """print_string(PRINT_FP, NULL, "%s", text)."""
        if self._jw is None:
            self._text.append(text)

    def nl(self) -> None:
        """print_nl()."""
        if self._jw is None:
            self._text.append(self.sl)

    def string(self, key: str | None, text: str, value: str, kind: int = PRINT_ANY) -> None:
        to_json, to_text = self._ctx(kind)
        if to_json:
            self._json_value(key, _quote(value))
        elif to_text:
            self._text.append(text)

    def uint(self, key: str | None, text: str, value: int, kind: int = PRINT_ANY) -> None:
        to_json, to_text = self._ctx(kind)
        if to_json:
            self._json_value(key, str(value))
        elif to_text:
            self._text.append(text)

    def hex(self, key: str | None, text: str, value: int, kind: int = PRINT_ANY) -> None:
        """print_hex: JSON gets the value as a hex string without 0x."""
        to_json, to_text = self._ctx(kind)
        if to_json:
            self._json_value(key, _quote(f"{value:x}"))
        elif to_text:
            self._text.append(text)

    def bool(self, key: str | None, text: str, value: bool, kind: int = PRINT_ANY) -> None:
        to_json, to_text = self._ctx(kind)
        if to_json:
            self._json_value(key, "true" if value else "false")
        elif to_text:
            self._text.append(text)

    def null(self, key: str | None, text: str, kind: int = PRINT_ANY) -> None:
        to_json, to_text = self._ctx(kind)
        if to_json:
            self._json_value(key, "null")
        elif to_text:
            self._text.append(text)

    # ------------------------------------------------------------ nesting
    def open_object(self, key: str | None = None) -> None:
        jw = self._jw
        if jw is not None:
            if key is not None:
                jw.name(key)
            jw.begin("{")

    def close_object(self) -> None:
        if self._jw is not None:
            self._jw.end("}")

    def open_array(self, kind: int, key: str | None) -> None:
        to_json, to_text = self._ctx(kind)
        if to_json:
            assert self._jw is not None
            if key is not None:
                self._jw.name(key)
            self._jw.begin("[")
        elif to_text and key is not None:
            self._text.append(key)

    def close_array(self, kind: int, text: str = "") -> None:
        to_json, to_text = self._ctx(kind)
        if to_json:
            assert self._jw is not None
            self._jw.end("]")
        elif to_text:
            self._text.append(text)

    def any(self, key: str | None, text: str, value: Any, kind: int = PRINT_ANY) -> None:
        """Dispatch on the Python type of `value` (bool before int)."""
        if isinstance(value, bool):
            self.bool(key, text, value, kind)
        elif isinstance(value, int):
            self.uint(key, text, value, kind)
        else:
            self.string(key, text, str(value), kind)

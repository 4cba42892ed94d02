"""User errors and exit statuses, shared by the library and every console script.

Contract: bad input ends in exactly one line on stderr, ``<prog>: error: <message>``, and a documented exit
status; never a traceback, never a usage block. Exit statuses:

========  ==========================================================
``0``     success
``1``     the work ran and failed (a parity failure, a failed suite)
``2``     bad input or a condition the user must fix (:data:`EXIT_USAGE`)
``3``     an optional part is not installed (:data:`EXIT_MISSING`)
``4``     a file on disk failed its integrity check: a damaged gallery, or a model file that differs from
          what ``tki.json`` records (:data:`EXIT_DAMAGED`); the message names the file and what to do
``130``   interrupted (Ctrl-C)
========  ==========================================================
"""
from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_MISSING", "EXIT_DAMAGED", "EXIT_INTERRUPTED",
    "UsageError", "ConfigError", "render_fields", "one_line", "printable",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISSING = 3
EXIT_DAMAGED = 4
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input, or a condition the user must fix: printed as one line, exit status ``code``.

    ``prog`` (optional) names the command that refused, e.g. ``tki embed``; the message says what to do.
    """

    def __init__(self, message: str, code: int = EXIT_USAGE, prog: str | None = None) -> None:
        super().__init__(message)
        self.code = int(code)
        self.prog = prog


class ConfigError(ValueError):
    """A typed config refused a value: ``field`` names the config field, ``reason`` says what is allowed.

    ``str(e)`` is ``"<field> <reason>"``. The reason may name other fields as ``{name}`` tokens, listed in
    ``others`` (``ConfigError("expansion_add", "shapes an HNSW graph; an {exact} gallery has none",
    others=("exact",))``). Library code raises it; a front door says it in its own words with
    :meth:`render` (the CLI passes its flags: ``--expansion-add shapes ...; an --exact gallery has none``) and
    reports it as bad input (exit status :data:`EXIT_USAGE`). Every typed config (``TrainConfig``,
    ``EmbedConfig``, ``IndexConfig``, ``ServeConfig``) raises this one type.
    """

    code: int = EXIT_USAGE

    def __init__(self, field: str, reason: str, others: tuple[str, ...] = ()) -> None:
        self.field = field
        self.reason = reason
        self.fields = (field, *others)
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """``"<names[field]> <reason>"``, every ``{token}`` of :attr:`fields` replaced the same way (default:
        the field's own name)."""
        names = names or {}
        return f"{names.get(self.field, self.field)} {render_fields(self.reason, self.fields, names)}"

    def __str__(self) -> str:
        return self.render()


_TOKEN = re.compile(r"\{([a-z][a-z_]*)\}")


def render_fields(template: str, fields: tuple[str, ...], names: Mapping[str, str] | None = None) -> str:
    """``template`` with each ``{field}`` token of ``fields`` replaced by ``names[field]`` (default: the field
    name); other text, braces included, is left as it is."""
    names = names or {}

    def sub(m: re.Match[str]) -> str:
        return names.get(m.group(1), m.group(1)) if m.group(1) in fields else m.group(0)

    return _TOKEN.sub(sub, template)


def printable(text: object) -> str:
    """``text`` safe to print on one terminal line: control characters (newlines, escape sequences, other
    C0/C1 codes, DEL) become backslash escapes (``\\n``, ``\\x1b``), so a file name or a metadata value can
    neither forge extra output lines nor send terminal control codes."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """``exc`` as one printable line.

    An ``OSError`` with ``strerror`` gives ``"<strerror>: <filename>"``; anything else its message with
    every line joined by ``"; "`` (the type name when the message is empty). Control characters are escaped
    (:func:`printable`). ``with_type`` appends ``" (<TypeName>)"`` -- for unexpected error types, where the
    type tells the user more than the message.
    """
    if isinstance(exc, OSError) and exc.strerror:
        msg = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = "; ".join(lines) if lines else type(exc).__name__
    msg = printable(msg)
    return f"{msg} ({type(exc).__name__})" if with_type else msg

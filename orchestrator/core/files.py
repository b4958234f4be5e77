"""User files read as text: a file that is not UTF-8 gets a message that says where and what to do.

Python's own `UnicodeDecodeError` names neither the file nor the line, and says nothing of the
fix; `read_utf8` gives both. A UTF-8 byte-order mark (what some Windows editors write) is
dropped.
"""

from __future__ import annotations

from pathlib import Path


def read_utf8(path: str | Path, error: type[Exception]) -> str:
    """The file's text; raises `error(message)` naming the file, the byte offset, the line and
    column of the first byte that is not UTF-8, and how to re-encode the file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(not_utf8_message(path, data, exc)) from None


def not_utf8_message(path: Path, data: bytes, exc: UnicodeDecodeError) -> str:
    offset = exc.start
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return (f"{path}: the file is not UTF-8 text: the byte at offset {offset} (line {line}, byte {column} of "
            f"the line) is 0x{data[offset]:02x}, which is not valid UTF-8 there ({exc.reason}). Re-encode the "
            f"file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}` (use the file's real encoding "
            f"in place of latin1), or save it as UTF-8 from your editor")

"""Reading transcript files as text: decoding with line numbers, and cleaning utterance text.

Transcripts in the wild (MELD among them) mix UTF-8 with stray Windows-1252 bytes, carry
mojibake such as 'â€™' (UTF-8 read as cp1252 and saved again), smart quotes and CRLF line ends.
`decode_transcript` accepts UTF-8 with a few stray cp1252 punctuation bytes and refuses anything
else with the file, line and column; `clean_text` turns what it got into plain, comparable text.
"""
from __future__ import annotations

import codecs
import re
import threading
import unicodedata
from pathlib import Path

from core.schema import DataError

# Bytes 0x80-0x9F are never valid on their own in UTF-8 and are punctuation in cp1252 (smart
# quotes, dashes, ellipsis, euro): a file with a few of them was almost certainly edited on
# Windows. 0x81, 0x8D, 0x8F, 0x90 and 0x9D are undefined in cp1252 and stay errors.
_STRAY_CP1252 = {b for b in range(0x80, 0xA0)} - {0x81, 0x8D, 0x8F, 0x90, 0x9D}

_ASCII = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u200b": "", "\ufeff": "", "\r": "",
}
_ASCII_RE = re.compile("|".join(map(re.escape, _ASCII)))
# A cp1252-decoded lead byte of a multi-byte UTF-8 sequence (Â..ô) followed by 1-3 characters
# that cp1252 gives to continuation bytes: the shape of mojibake.
_CONT = "\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d" \
        "\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
_MOJIBAKE_RE = re.compile(f"[\u00c2-\u00f4][{_CONT}]{{1,3}}")


def decode_transcript(data: bytes, path: str | Path) -> tuple[str, int]:
    """UTF-8 text of a transcript (BOM dropped) and how many stray cp1252 bytes were repaired.

    Raises DataError naming the file, line and column of the first byte that is neither UTF-8
    nor a stray cp1252 punctuation byte (e.g. a Latin-1 or UTF-16 file).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data[:4096]:
        line, col = _position(data, data.index(b"\x00"))
        raise DataError(f"{path}: line {line}, column {col}: NUL byte; the file looks like UTF-16, "
                        f"save it as UTF-8")
    _state.data, _state.path, _state.repaired = data, path, 0
    try:
        text = data.decode("utf-8", errors=_HANDLER)
        return text, _state.repaired
    finally:
        _state.data = None


def _repair_stray_byte(err: UnicodeDecodeError):
    """Codec error handler: a stray cp1252 punctuation byte becomes its character; others raise."""
    data, byte = _state.data, _state.data[err.start]
    if byte not in _STRAY_CP1252:
        line, col = _position(data, err.start)
        raise DataError(f"{_state.path}: line {line}, column {col}: undecodable byte 0x{byte:02x} "
                        f"(not UTF-8); re-save the file as UTF-8")
    _state.repaired += 1
    return bytes([byte]).decode("cp1252"), err.start + 1


# Registered once; the per-call data live in a thread-local, so concurrent readers do not mix.
_HANDLER = "dialogue_data.stray_cp1252"
_state = threading.local()
codecs.register_error(_HANDLER, _repair_stray_byte)


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset, as a text editor shows them."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _fix_mojibake(match: re.Match) -> str:
    chunk = match.group(0)
    try:
        return chunk.encode("cp1252").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return chunk


def clean_text(text: str) -> str:
    """Repair mojibake, map smart quotes/dashes/ellipses to ASCII, drop CRs, squeeze spaces."""
    text = _MOJIBAKE_RE.sub(_fix_mojibake, text)
    text = unicodedata.normalize("NFC", text)
    text = _ASCII_RE.sub(lambda m: _ASCII[m.group(0)], text)
    return " ".join(text.split())

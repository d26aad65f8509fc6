"""Turning generated token ids into text, piece by piece: incremental detokenisation and stop strings.

A character can span several tokens (byte-level BPE splits UTF-8 into bytes), so decoding each token alone would
print half characters. ``IncrementalDetokenizer`` decodes a short window and holds back a piece until its bytes
form whole characters (as vLLM and TGI do). ``StopStrings`` holds back text that could be the start of a stop
string, so a stop string never reaches the client, even split across tokens.
"""

from __future__ import annotations

import functools
from typing import Any

REPLACEMENT = "\ufffd"


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table used by byte-level BPE tokenizers."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The raw bytes a token stands for (special tokens: none), whatever its tokenizer's scheme."""
    if token_id in set(getattr(tokenizer, "all_special_ids", ())):
        return b""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if piece is None:
        return b""
    if _is_byte_level(tokenizer):
        table = _byte_decoder()
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # sentencepiece byte fallback
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def token_bytes_table(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """``token_bytes`` for every id below ``vocab_size`` (ids past the tokenizer's vocabulary: none)."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    byte_level = _is_byte_level(tokenizer)
    table = _byte_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    out: list[bytes] = []
    for token_id, piece in enumerate(pieces):
        if token_id in special or piece is None:
            out.append(b"")
        elif byte_level and all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        else:
            out.append(token_bytes(tokenizer, token_id))
    return out + [b""] * (vocab_size - len(out))


class IncrementalDetokenizer:
    """Text deltas for token ids as they arrive, never half a character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_ids: list[int]) -> str:
        """The new text these tokens complete (empty while a character's bytes are still incomplete)."""
        self.ids.extend(token_ids)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back when generation ends (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


class StopStrings:
    """Cuts the text at the first stop string (OpenAI semantics: only generated text counts) and holds back
    what could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, delta: str) -> str:
        """The text that is now certain not to be (part of) a stop string."""
        if self.stopped or not delta:
            return ""
        start = max(0, len(self.text) - self.hold)
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i != -1]
        if hits:
            cut = min(hits)
            self.text, self.stopped = self.text[:cut], True
            return self._emit(cut)
        return self._emit(len(self.text) - self.hold)

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : upto], upto
        return piece


def token_text(raw: bytes) -> str:
    """A token's bytes as text (a partial UTF-8 sequence shows as the replacement character)."""
    return raw.decode("utf-8", errors="replace")

"""HPACK (RFC 7541) header decoding for the sidecar's HTTP/2 gRPC client (:mod:`.h2_grpc`).

Only decoding is needed in full: the app's server may use its dynamic table and Huffman-coded
strings in any header block, and every block must be decoded to keep the table in step. The
sidecar's own header blocks are built from literals (:func:`literal`), which needs no table.
Header blocks are rare (one when a stream opens, one when it ends), so this favours clarity
over speed.
"""

from __future__ import annotations

from collections import deque


class HpackError(Exception):
    """A header block that is not valid HPACK: the connection cannot continue."""


STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
)

# RFC 7541 Appendix B is a canonical Huffman code: codes of one length are consecutive in
# symbol order, so each symbol's code length (here one letter each, "A" = 5 bits, for bytes
# 0-255 and EOS) determines the whole table.
_CODE_LENGTHS = (
    "ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCCDCDIOIJBKABAB"
    "ABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSSQQRQSRSSPRRRSRRSVVPORSRUV"
    "VVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWVZ"
)
_EOS = 256


def _decoding_table() -> dict[tuple[int, int], int]:
    """(length, code) -> symbol, from the code lengths."""
    lengths = [ord(letter) - ord("A") + 5 for letter in _CODE_LENGTHS]
    table: dict[tuple[int, int], int] = {}
    code, previous = -1, min(lengths)
    for symbol in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        code = (code + 1) << (lengths[symbol] - previous)
        previous = lengths[symbol]
        table[lengths[symbol], code] = symbol
    return table


_HUFFMAN = _decoding_table()


def huffman_decode(data: bytes) -> bytes:
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            symbol = _HUFFMAN.get((length, code))
            if symbol is None:
                if length > 30:
                    raise HpackError("invalid Huffman code")
                continue
            if symbol == _EOS:
                raise HpackError("EOS inside a Huffman-coded string")
            out.append(symbol)
            code = length = 0
    # What is left must be a prefix of EOS (all ones), shorter than a byte.
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: str, value: str) -> bytes:
    """A header as "literal without indexing", name and value as plain (not Huffman) strings."""
    encoded_name, encoded_value = name.encode(), value.encode()
    return (
        b"\x00"
        + encode_integer(len(encoded_name), 7)
        + encoded_name
        + encode_integer(len(encoded_value), 7)
        + encoded_value
    )


class Decoder:
    """Decodes the header blocks of one connection, in order (they share the dynamic table)."""

    def __init__(self, max_table_size: int = 4096) -> None:
        self._max_allowed = max_table_size  # what the sidecar advertised (the default)
        self._max_size = max_table_size
        self._size = 0
        self._dynamic: deque[tuple[str, str]] = deque()

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        position = 0
        while position < len(block):
            byte = block[position]
            if byte & 0x80:  # indexed field
                index, position = self._integer(block, position, 7)
                headers.append(self._entry(index))
            elif byte & 0x40:  # literal, added to the table
                header, position = self._literal(block, position, 6)
                self._add(header)
                headers.append(header)
            elif byte & 0x20:  # table size update
                size, position = self._integer(block, position, 5)
                if size > self._max_allowed:
                    raise HpackError(f"table size {size} over {self._max_allowed}")
                self._max_size = size
                self._evict()
            else:  # literal not added (0000) or never indexed (0001)
                header, position = self._literal(block, position, 4)
                headers.append(header)
        return headers

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if index == 0 or dynamic >= len(self._dynamic):
            raise HpackError(f"header index {index} out of range")
        return self._dynamic[dynamic]

    def _literal(self, block: bytes, position: int, prefix_bits: int) -> tuple[tuple[str, str], int]:
        index, position = self._integer(block, position, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, position = self._string(block, position)
        value, position = self._string(block, position)
        return (name, value), position

    def _string(self, block: bytes, position: int) -> tuple[str, int]:
        if position >= len(block):
            raise HpackError("header block ends inside a string")
        huffman = block[position] & 0x80
        length, position = self._integer(block, position, 7)
        end = position + length
        if end > len(block):
            raise HpackError("header block ends inside a string")
        raw = block[position:end]
        text = (huffman_decode(raw) if huffman else raw).decode("latin-1")
        return text, end

    @staticmethod
    def _integer(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = block[position] & limit
        position += 1
        if value < limit:
            return value, position
        shift = 0
        while True:
            if position >= len(block) or shift > 28:
                raise HpackError("bad integer in header block")
            byte = block[position]
            position += 1
            value += (byte & 127) << shift
            shift += 7
            if not byte & 128:
                return value, position

    def _add(self, header: tuple[str, str]) -> None:
        size = len(header[0]) + len(header[1]) + 32
        self._dynamic.appendleft(header)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size and self._dynamic:
            name, value = self._dynamic.pop()
            self._size -= len(name) + len(value) + 32

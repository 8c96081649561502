"""Deterministic, decodable Stripe-looking ids: a seeded random-looking body plus a serial."""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_MASK64 = (1 << 64) - 1
RANDOM_CHARS = 16
SERIAL_CHARS = 8
MAX_SERIAL = 62**SERIAL_CHARS


def _mix(x: int) -> int:
    # splitmix64 finaliser: cheap, well-spread, deterministic across runs and platforms.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]


def _base62(value: int, width: int) -> str:
    # Two digits per divmod (every event and object id is made here): the same digits as one
    # at a time, least significant first, then reversed.
    out = []
    for _ in range(width >> 1):
        value, r = divmod(value, 3844)
        out.append(_PAIRS[r])
    text = "".join(reversed(out))
    return ALPHABET[value % 62] + text if width & 1 else text


class IdMaker:
    """Ids like `evt_<16 random-looking chars><8-char serial>`: 24 chars after the prefix as
    Stripe's, unordered (the random part leads), and decodable back to the serial without a
    lookup table, which keeps a 1M-event history small."""

    __slots__ = ("_salt",)

    def __init__(self, seed: int, salt: str) -> None:
        self._salt = _mix(seed ^ int.from_bytes(salt.encode()[:8].ljust(8, b"\0"), "big"))

    def body(self, serial: int) -> str:
        a = _mix(self._salt ^ serial)
        b = _mix(a)
        return _base62(a, 11) + _base62(b, RANDOM_CHARS - 11) + _base62(serial, SERIAL_CHARS)

    def make(self, prefix: str, serial: int) -> str:
        return prefix + self.body(serial)

    def decode(self, prefix: str, text: str) -> int | None:
        """The serial behind an id this maker made with `prefix`, or None for anything else."""
        serial = serial_of(text, prefix)
        return serial if serial is not None and self.make(prefix, serial) == text else None


def token(seed_value: int, width: int = 14) -> str:
    """A short random-looking token (request ids, idempotency keys) from any integer."""
    return _base62(_mix(seed_value) ^ (_mix(seed_value + 1) << 64), width)


def serial_of(text: str, prefix: str) -> int | None:
    """The serial encoded in an id's tail (unverified: compare the whole id afterwards)."""
    if not text.startswith(prefix) or len(text) != len(prefix) + RANDOM_CHARS + SERIAL_CHARS:
        return None
    serial = 0
    for c in text[-SERIAL_CHARS:]:
        digit = _INDEX.get(c)
        if digit is None:
            return None
        serial = serial * 62 + digit
    return serial


def uuid_token(seed_value: int) -> str:
    """A UUID-shaped token (Stripe SDKs send UUIDs as idempotency keys)."""
    h = f"{_mix(seed_value):016x}{_mix(seed_value ^ _MASK64):016x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"

"""Stripe-Signature verification (pure): HMAC-SHA256 of "<t>.<raw body>", several secrets."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from ingestor import clock
from ingestor.errors import WebhookSignatureError

DEFAULT_TOLERANCE_SECONDS = 300.0
SCHEME = "v1"

# Reason codes (metric label values): bounded, known in advance.
NO_HEADER = "no_header"
MALFORMED_HEADER = "malformed_header"
NO_SIGNATURE = "no_signature"
MISMATCH = "mismatch"
STALE = "stale_timestamp"
BODY_NOT_UTF8 = "body_not_utf8"
REASONS = (NO_HEADER, MALFORMED_HEADER, NO_SIGNATURE, MISMATCH, STALE, BODY_NOT_UTF8)

# What the official SDK counts as a blank secret (`secret.strip(" \t\r\n\f\v") == ""`).
_BLANK = " \t\r\n\f\v"


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """A parsed `Stripe-Signature`: the timestamp and the `v1` signatures, in header order."""

    timestamp: int
    signatures: tuple[str, ...]


def parse_header(header: str | None) -> SignatureHeader:
    """Parses `t=<unix>,v1=<hex>[,v1=<hex>...]` exactly as stripe-python 16.1.0 does.

    The SDK's rules, kept on purpose so both accept the same headers: items split on `,`,
    keys compared as written (no trimming), a value ends at its second `=`, the first `t`
    wins and goes through Python's `int()` (sign, surrounding whitespace and `_` allowed),
    an item that is a bare `t` or `v1` with no `=` makes the header malformed, other
    schemes (`v0`) are ignored. Only the timestamp's integer value is signed, never its text.
    """
    if not header:
        raise WebhookSignatureError(NO_HEADER, "no Stripe-Signature header")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, rest = item.partition("=")
        if key not in ("t", SCHEME):
            continue
        if not sep:
            raise WebhookSignatureError(MALFORMED_HEADER, f"Stripe-Signature: bare {key!r} item")
        value = rest.partition("=")[0]
        (timestamps if key == "t" else signatures).append(value)
    if not timestamps:
        raise WebhookSignatureError(MALFORMED_HEADER, "Stripe-Signature: no timestamp")
    try:
        timestamp = int(timestamps[0])
    except ValueError:
        raise WebhookSignatureError(
            MALFORMED_HEADER, "Stripe-Signature: timestamp is not an integer"
        ) from None
    if not signatures:
        raise WebhookSignatureError(NO_SIGNATURE, f"Stripe-Signature: no {SCHEME} signature")
    return SignatureHeader(timestamp, tuple(signatures))


class SignatureVerifier:
    """Checks deliveries against one or more signing secrets (several while one is rolled).

    `tolerance_seconds` None or 0 turns the age check off, as in the SDK; a timestamp in the
    future is accepted, as in the SDK. Time comes from `ingestor.clock` unless given.
    """

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance_seconds: float | None = DEFAULT_TOLERANCE_SECONDS,
        clock_: clock.Clock | None = None,
    ) -> None:
        if isinstance(secrets, str):
            raise TypeError("secrets must be a sequence of strings, not one string")
        keys: list[bytes] = []
        for index, secret in enumerate(secrets):
            # A blank key is a MAC anyone can compute: refused, where the SDK rejects every
            # delivery checked against it.
            if not isinstance(secret, str) or secret.strip(_BLANK) == "":
                raise ValueError(f"webhook secret #{index} is blank")
            try:
                keys.append(secret.encode("utf-8"))
            except UnicodeEncodeError:
                raise ValueError(f"webhook secret #{index} is not valid text") from None
        if not keys:
            raise ValueError("at least one webhook secret is needed")
        self._keys = tuple(keys)
        self.tolerance_seconds = tolerance_seconds
        self._clock = clock_

    def __repr__(self) -> str:
        # Never the secrets themselves.
        return f"SignatureVerifier(secrets={len(self._keys)}, tolerance={self.tolerance_seconds})"

    def verify(self, payload: bytes, header: str | None, *, now: float | None = None) -> int:
        """Returns the header's timestamp when a `v1` signature matches a secret and the
        timestamp is recent enough; raises WebhookSignatureError with a reason otherwise."""
        try:
            # The SDK signs the body's text: a body that is not UTF-8 never verifies there.
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookSignatureError(BODY_NOT_UTF8, "body is not UTF-8") from None
        parsed = parse_header(header)
        signed = b"%d.%s" % (parsed.timestamp, payload)
        expected = [
            hmac.new(key, signed, hashlib.sha256).hexdigest().encode("ascii") for key in self._keys
        ]
        matched = False
        for candidate in parsed.signatures:
            if not candidate.isascii():
                # The SDK's compare_digest raises on non-ASCII text; the signatures before
                # this one were already compared, the ones after it never are.
                break
            given = candidate.encode("ascii")
            for digest in expected:
                # Every pair compared, in constant time each.
                matched |= hmac.compare_digest(digest, given)
            if matched:
                break
        if not matched:
            raise WebhookSignatureError(MISMATCH, "no signature matches the expected one")
        tolerance = self.tolerance_seconds
        if tolerance:
            current = (self._clock or clock.current()).wall() if now is None else now
            if parsed.timestamp < current - tolerance:
                raise WebhookSignatureError(
                    STALE, f"timestamp {parsed.timestamp} is older than {tolerance:g}s"
                )
        return parsed.timestamp


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """A `Stripe-Signature` value for `payload` (tests; the simulator has its own signer)."""
    digest = hmac.new(
        secret.encode("utf-8"), b"%d.%s" % (timestamp, payload), hashlib.sha256
    ).hexdigest()
    return f"t={timestamp},{SCHEME}={digest}"


__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "REASONS",
    "SignatureHeader",
    "SignatureVerifier",
    "parse_header",
    "sign",
]

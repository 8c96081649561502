"""signature: the verifier accepts exactly what stripe-python's WebhookSignature accepts."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TypeVar
from unittest import mock

import pytest
import stripe
import stripe._webhook as sdk_webhook
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingestor import clock
from ingestor.errors import IngestorError, WebhookSignatureError
from ingestor.signature import SignatureVerifier, parse_header, sign

NOW = 1_780_000_000
SECRET = "whsec_current0123456789"
OLD_SECRET = "whsec_previous987654321"
T = TypeVar("T")
NO_SURROGATES = st.characters(exclude_categories=["Cs"])
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
BODY = b'{"id":"evt_1","object":"event"}'


def hexsig(payload: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), b"%d.%s" % (timestamp, payload), hashlib.sha256).hexdigest()


def sdk_accepts(
    payload: bytes, header: str | None, secrets: Sequence[str], tolerance: float | None, now: float
) -> bool:
    """The official SDK's verdict: some secret verifies, with `time.time()` fixed at `now`."""
    with mock.patch.object(sdk_webhook, "time", SimpleNamespace(time=lambda: now)):
        for secret in secrets:
            try:
                stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
            except Exception:  # the SDK also lets TypeError/UnicodeError escape: a rejection
                continue
            return True
    return False


def ours_accepts(
    payload: bytes, header: str | None, secrets: Sequence[str], tolerance: float | None, now: float
) -> bool:
    verifier = SignatureVerifier(secrets, tolerance_seconds=tolerance)
    try:
        verifier.verify(payload, header, now=now)
    except WebhookSignatureError:
        return False
    return True


# --- generated headers ------------------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Picks one of the strategies with the given integer weights."""
    flat = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.one_of(flat)


secret_text = weighted(
    (8, st.text(ALNUM, min_size=8, max_size=32).map(lambda s: f"whsec_{s}")),
    (1, st.text(NO_SURROGATES, min_size=1, max_size=12)),
    (1, st.sampled_from(["", " ", "\t\n", "\x0b\x0c"])),  # blank by the SDK's own rule
)
payloads = weighted(
    (1, st.binary(max_size=64)),  # often not UTF-8
    (1, st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass"))),
    (6, st.text(NO_SURROGATES, max_size=64).map(str.encode)),
)
timestamps = st.one_of(
    st.integers(NOW - 1000, NOW + 1000),
    st.integers(-(10**20), 10**20),
    st.just(0),
)
tolerances = st.one_of(
    st.none(),
    st.just(0),
    st.just(300),
    st.integers(1, 2000),
    st.floats(0.001, 5000.0),
    st.integers(-10, -1),
)


def ts_text(ts: int) -> st.SearchStrategy[str]:
    """Ways of writing timestamp `ts` that Python's int() still reads as `ts`."""
    plain = str(ts)
    return st.sampled_from(
        [
            plain,
            f" {plain}",
            f"{plain}\t",
            f"+{plain}" if ts >= 0 else plain,
            f"0{plain}" if ts >= 0 else plain,
            "_".join(plain) if ts >= 0 and len(plain) > 1 else plain,
            plain.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),
        ]
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, str | None, list[str], float | None, float]:
    secrets = draw(st.lists(secret_text, min_size=1, max_size=3))
    payload = draw(payloads)
    ts = draw(timestamps)
    tolerance = draw(tolerances)
    signing = [*secrets, *secrets, OLD_SECRET, "whsec_notconfigured"]
    if draw(st.sampled_from(range(20))) == 7:
        header: str | None = draw(st.one_of(st.none(), st.text(max_size=80)))
    else:
        items: list[str] = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(
                st.sampled_from(
                    ["valid"] * 4 + ["tampered", "upper", "empty", "v0", "junk", "suffix", "suffix"]
                )
            )
            good = hexsig(payload, draw(st.sampled_from(signing)), ts)
            if kind == "valid":
                items.append(f"v1={good}")
            elif kind == "tampered":
                at = draw(st.integers(0, len(good) - 1))
                flipped = "0" if good[at] != "0" else "1"
                items.append(f"v1={good[:at]}{flipped}{good[at + 1 :]}")
            elif kind == "upper":
                items.append(f"v1={good.upper()}")
            elif kind == "empty":
                items.append("v1=")
            elif kind == "v0":
                items.append(f"v0={good}")
            elif kind == "suffix":
                items.append(f"v1={good}={draw(st.text(max_size=5))}")
            else:
                items.append(draw(st.text(max_size=12)))
        t_item = draw(
            weighted(
                (5, ts_text(ts).map(lambda text: f"t={text}")),
                (1, st.sampled_from(["t=", "t", "t=abc", "t=1.5", "t=1e9", " t=1", "T=1"])),
            )
        )
        if draw(st.sampled_from(range(15))) != 7:
            items.insert(draw(st.integers(0, len(items))), t_item)
        if draw(st.sampled_from(range(5))) == 3:
            items.insert(draw(st.integers(0, len(items))), f"t={draw(ts_text(ts + 1))}")
        separator = draw(st.sampled_from([",", ",", ", "]))
        header = separator.join(items)
    if tolerance:
        # Near the tolerance boundary as often as anywhere else.
        offset = draw(
            st.one_of(
                st.just(float(tolerance)),
                st.floats(-abs(tolerance) * 2, abs(tolerance) * 1.5, allow_nan=False),
                st.sampled_from([tolerance + 1e-6, tolerance - 1e-6, tolerance + 1, 0.0]),
            )
        )
        now = ts + offset
    else:
        now = float(ts + draw(st.integers(-(10**6), 10**6)))
    return payload, header, secrets, tolerance, now


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cases())
def test_accepts_exactly_what_the_sdk_accepts(
    case: tuple[bytes, str | None, list[str], float | None, float],
) -> None:
    """Over generated payloads, headers (valid, tampered, uppercase, empty, several v1, v0,
    junk items, odd timestamp spellings), secret lists (rotation, blanks) and times around the
    tolerance boundary, the verifier's accept/reject matches stripe-python's: one verifier
    over a secret list accepts iff the SDK accepts with some secret of the list. A list with a
    blank secret is refused at construction, and the SDK never accepts under a blank secret."""
    payload, header, secrets, tolerance, now = case
    blank = [s for s in secrets if s.strip(" \t\r\n\f\v") == ""]
    usable = [s for s in secrets if s not in blank]
    if blank:
        with pytest.raises(ValueError, match="blank"):
            SignatureVerifier(secrets, tolerance_seconds=tolerance)
        assert not sdk_accepts(payload, header, blank, tolerance, now)
    if usable:
        verdict = sdk_accepts(payload, header, usable, tolerance, now)
        event("accepted" if verdict else "rejected")
        assert ours_accepts(payload, header, usable, tolerance, now) == verdict


# --- the edge cases, by name ------------------------------------------------------------------

GOOD = hexsig(BODY, SECRET, NOW)


@pytest.mark.parametrize(
    ("header", "tolerance", "now", "accepted"),
    [
        (f"t={NOW},v1={GOOD}", 300, NOW, True),
        (f"t={NOW},v1={GOOD.upper()}", 300, NOW, False),  # hex compared as sent
        (f"t={NOW},v1=", 300, NOW, False),  # empty signature
        (f"t={NOW},v0={GOOD}", 300, NOW, False),  # v0 is ignored: no v1 left
        (f"t={NOW},v0=bogus,v1={GOOD}", 300, NOW, True),
        (f"t={NOW},v1=bad,v1={GOOD}", 300, NOW, True),  # any v1 may match
        (f"t={NOW}, v1={GOOD}", 300, NOW, False),  # " v1" is not the v1 key
        (f"t= {NOW},v1={GOOD}", 300, NOW, True),  # int() trims the timestamp
        (f"t={NOW}.0,v1={GOOD}", 300, NOW, False),  # not an integer
        (f"t={NOW},t=1,v1={GOOD}", 300, NOW, True),  # the first t wins
        (f"t={NOW},v1={GOOD},t", 300, NOW, False),  # a bare t item breaks the header
        (f"t={NOW},v1={GOOD}=x", 300, NOW, True),  # a value ends at its second '='
        (f"v1={GOOD}", 300, NOW, False),  # no timestamp
        (f"t={NOW},v1={GOOD}", 300, NOW + 300, True),  # exactly at the boundary
        (f"t={NOW},v1={GOOD}", 300, NOW + 300.001, False),  # just past it
        (f"t={NOW},v1={GOOD}", None, NOW + 10**9, True),  # no tolerance: no age check
        (f"t={NOW},v1={GOOD}", 0, NOW + 10**9, True),  # 0 also means no age check
        (f"t={NOW},v1={GOOD}", 300, NOW - 10**6, True),  # the future is not checked
        (f"t={NOW},v1=é,v1={GOOD}", 300, NOW, False),  # non-ASCII before the match
        (f"t={NOW},v1={GOOD},v1=é", 300, NOW, True),  # non-ASCII after it
        ("", 300, NOW, False),
        (None, 300, NOW, False),
    ],
)
def test_named_edge_cases_agree_with_the_sdk(
    header: str | None, tolerance: float | None, now: float, accepted: bool
) -> None:
    """Each named edge case gets the stated verdict from both the verifier and the SDK."""
    assert ours_accepts(BODY, header, [SECRET], tolerance, now) is accepted
    assert sdk_accepts(BODY, header, [SECRET], tolerance, now) is accepted


@pytest.mark.parametrize("ts", [-1, -(10**15), 10**30, 0])
def test_negative_and_huge_timestamps_sign_their_integer_value(ts: int) -> None:
    """Negative and huge timestamps verify when signed over their decimal form, as in the SDK
    (no tolerance: such times are only ever accepted when the age check is off or future)."""
    header = f"t={ts},v1={hexsig(BODY, SECRET, ts)}"
    assert ours_accepts(BODY, header, [SECRET], None, NOW)
    assert sdk_accepts(BODY, header, [SECRET], None, NOW)
    assert ours_accepts(BODY, header, [SECRET], 300, NOW) is (ts >= NOW - 300)


def test_rotation_accepts_either_secret() -> None:
    """While a secret is rolled, a delivery signed under the old or the new one verifies, and
    one signed under a secret not configured does not."""
    verifier = SignatureVerifier([SECRET, OLD_SECRET], tolerance_seconds=300)
    for secret in (SECRET, OLD_SECRET):
        assert verifier.verify(BODY, sign(BODY, secret, NOW), now=NOW) == NOW
    with pytest.raises(WebhookSignatureError) as err:
        verifier.verify(BODY, sign(BODY, "whsec_other", NOW), now=NOW)
    assert err.value.reason == "mismatch"


def test_reasons_and_messages_never_carry_secret_or_body() -> None:
    """Each rejection has its reason code, is an IngestorError that is not retriable, and its
    text contains neither the secret, the signature nor the body."""
    verifier = SignatureVerifier([SECRET], tolerance_seconds=300)
    good = sign(BODY, SECRET, NOW)
    cases = {
        "no_header": (BODY, None, NOW),
        "malformed_header": (BODY, "t=soon,v1=00", NOW),
        "no_signature": (BODY, f"t={NOW},v0=00", NOW),
        "mismatch": (BODY + b" ", good, NOW),
        "stale_timestamp": (BODY, good, NOW + 301),
        "body_not_utf8": (b"\xff" + BODY, good, NOW),
    }
    for reason, (payload, header, now) in cases.items():
        with pytest.raises(WebhookSignatureError) as err:
            verifier.verify(payload, header, now=now)
        assert err.value.reason == reason
        assert isinstance(err.value, IngestorError)
        assert not err.value.retriable
        text = f"{err.value} {err.value!r}"
        for secret_part in (SECRET, GOOD, BODY.decode(), "evt_1"):
            assert secret_part not in text
    assert SECRET not in repr(verifier)


def test_default_time_comes_from_the_clock_seam() -> None:
    """Without `now`, the age check reads ingestor.clock: a simulated clock makes a stale
    delivery fresh."""
    verifier = SignatureVerifier([SECRET], tolerance_seconds=300)
    header = sign(BODY, SECRET, NOW)

    class Fixed(clock.SystemClock):
        def wall(self) -> float:
            return NOW + 10.0

    with clock.use(Fixed()):
        assert verifier.verify(BODY, header) == NOW
    with pytest.raises(WebhookSignatureError, match="older"):
        verifier.verify(BODY, header)  # the machine's clock: years later


def test_construction_refuses_no_secret_and_a_bare_string() -> None:
    """An empty secret list, a blank secret, or one string instead of a list are refused."""
    with pytest.raises(ValueError, match="at least one"):
        SignatureVerifier([])
    with pytest.raises(ValueError, match="blank"):
        SignatureVerifier([SECRET, " "])
    with pytest.raises(TypeError):
        SignatureVerifier(SECRET)


def test_parse_header_keeps_signature_order() -> None:
    """parse_header returns the first timestamp and every v1 in header order, v0 dropped."""
    parsed = parse_header("t=12,v1=aa,v0=bb,v1=cc,x=1")
    assert parsed.timestamp == 12
    assert parsed.signatures == ("aa", "cc")

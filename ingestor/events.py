"""Event: one normalized record for v1 snapshot events and v2 thin events, and time helpers."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
import orjson

from ingestor.errors import MalformedResponse

Api = Literal["v1", "v2"]
PLATFORM = "platform"


@dataclass(frozen=True, slots=True, order=True)
class Stream:
    """One stream of events with its own cursor: (api, account). account None = the platform."""

    api: Api
    account: str | None = None

    @property
    def key(self) -> str:
        return f"{self.api}:{self.account or PLATFORM}"

    @classmethod
    def parse(cls, key: str) -> Stream:
        api, _, account = key.partition(":")
        if api not in ("v1", "v2") or not account:
            raise ValueError(f"not a stream key: {key!r}")
        return cls(api, None if account == PLATFORM else account)  # type: ignore[arg-type]  # api checked

    def __str__(self) -> str:
        return self.key


def ms_to_rfc3339(ms: int) -> str:
    """Unix milliseconds -> RFC 3339 with milliseconds, as Stripe's v2 API writes it."""
    # Called for every event's header. A backfill's events are mostly a second apart or more,
    # so a cache of whole seconds missed on nearly every call (3 us each); tables of the
    # time's parts make every call a few lookups (0.5 us), and only the date is cached.
    seconds, millis = divmod(ms, 1000)
    day, rest = divmod(seconds, 86400)
    minutes, secs = divmod(rest, 60)
    return _date(day) + _HOUR_MINUTE[minutes] + _SECOND[secs] + _MILLIS[millis]


_HOUR_MINUTE = [f"T{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
_SECOND = [f"{s:02d}" for s in range(60)]
_MILLIS = [f".{m:03d}Z" for m in range(1000)]


@functools.lru_cache(maxsize=1024)
def _date(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, tz=UTC).strftime("%Y-%m-%d")


def rfc3339_to_ms(text: str) -> int:
    """RFC 3339 (with or without fraction, Z or offset) -> unix milliseconds."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


class Event(msgspec.Struct, frozen=True):
    """An event as read from Stripe, plus the few fields every stage needs pre-extracted.

    Immutable like the frozen dataclasses around it, but a Struct: one is built for every
    event of every page read, sweeps and poll overlaps included (about ten per event at the
    default settings), and a Struct is built about ten times faster than a frozen dataclass.
    """

    id: str
    type: str
    api: Api
    account: str | None
    created_ms: int
    livemode: bool
    api_version: str | None
    object_id: str | None
    payload: dict[str, Any]
    related_url: str | None = None
    # v1 events read from a list page keep Stripe's exact bytes (then `payload` is empty):
    # published unchanged, and never parsed into dicts only to be serialized again.
    raw: bytes | None = None

    @property
    def json(self) -> bytes:
        """The event as JSON: Stripe's own bytes when kept, else the payload serialized."""
        return self.raw if self.raw is not None else orjson.dumps(self.payload)

    @property
    def stream(self) -> Stream:
        return Stream(self.api, self.account)

    @classmethod
    def from_v1(cls, obj: Any, account: str | None = None) -> Event:
        """A v1 snapshot event; `payload` is Stripe's event JSON, unchanged."""
        try:
            data_object = obj["data"]["object"]
            return cls(
                id=_str(obj["id"]),
                type=_str(obj["type"]),
                api="v1",
                account=obj.get("account") or account,
                created_ms=int(obj["created"]) * 1000,
                livemode=bool(obj.get("livemode", False)),
                api_version=obj.get("api_version"),
                object_id=data_object.get("id") if isinstance(data_object, dict) else None,
                payload=obj,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"malformed v1 event: {exc!r}"[:200]) from exc

    @classmethod
    def from_v1_raw(cls, raw: bytes, account: str | None = None) -> Event:
        """A v1 event from its JSON bytes, reading only the fields routing needs."""
        try:
            head = _V1_HEAD.decode(raw)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise MalformedResponse(f"malformed v1 event: {exc}"[:200]) from exc
        return cls.from_v1_head(head, raw, account)

    @classmethod
    def from_v1_head(cls, head: V1Head, raw: bytes, account: str | None = None) -> Event:
        """A v1 event from its decoded head (see `V1_PAGE_HEADS`) and its JSON bytes."""
        if not head.id or not head.type:
            raise MalformedResponse("malformed v1 event: empty id or type")
        return cls(
            id=head.id,
            type=head.type,
            api="v1",
            account=head.account or account,
            created_ms=head.created * 1000,
            livemode=head.livemode,
            api_version=head.api_version,
            object_id=head.data.obj.id if head.data.obj is not None else None,
            payload={},
            raw=raw,
        )

    @classmethod
    def from_v2(cls, obj: Any, account: str | None = None, api_version: str | None = None) -> Event:
        """A v2 thin event; hydration later fetches `related_url`."""
        try:
            related = obj.get("related_object") or None
            return cls(
                id=_str(obj["id"]),
                type=_str(obj["type"]),
                api="v2",
                account=obj.get("context") or account,
                created_ms=rfc3339_to_ms(obj["created"]),
                livemode=bool(obj.get("livemode", False)),
                api_version=api_version,
                object_id=related.get("id") if related else None,
                payload=obj,
                related_url=related.get("url") if related else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"malformed v2 event: {exc!r}"[:200]) from exc


class _V1Object(msgspec.Struct):
    id: str | None = None


class _V1Data(msgspec.Struct):
    obj: _V1Object | None = msgspec.field(default=None, name="object")


class V1Head(msgspec.Struct):
    """The part of a v1 event routing reads; msgspec skips the rest without building it."""

    id: str
    type: str
    created: int
    data: _V1Data
    livemode: bool = False
    api_version: str | None = None
    account: str | None = None


class V1List(msgspec.Struct):
    """A v1 list page: each event's raw bytes, split without decoding them."""

    data: list[msgspec.Raw]
    has_more: bool


class V1PageHeads(msgspec.Struct):
    """A v1 list page's event heads, decoded in one call (the raw bytes come from V1_LIST,
    only when some event is to be built)."""

    data: list[V1Head]
    has_more: bool


_V1_HEAD = msgspec.json.Decoder(V1Head)
V1_LIST = msgspec.json.Decoder(V1List)
V1_PAGE_HEADS = msgspec.json.Decoder(V1PageHeads)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}"[:80])
    return value


HydrationStatus = Literal["ok", "not_found", "failed"]


@dataclass(frozen=True, slots=True)
class Hydration:
    """The outcome of fetching a thin event's related object."""

    status: HydrationStatus
    fetched_at_ms: int
    related_object: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record ready to produce: what route makes and sink writes."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    event_id: str | None = None

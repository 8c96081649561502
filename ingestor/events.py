"""Event: one normalized record for v1 snapshot events and v2 thin events, and time helpers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ingestor.errors import MalformedResponse

Api = Literal["v1", "v2"]
PLATFORM = "platform"


@dataclass(frozen=True, slots=True, order=True)
class SourcePartition:
    """One stream of events with its own cursor: (api, account). account None = the platform."""

    api: Api
    account: str | None = None

    @property
    def key(self) -> str:
        return f"{self.api}:{self.account or PLATFORM}"

    @classmethod
    def parse(cls, key: str) -> SourcePartition:
        api, _, account = key.partition(":")
        if api not in ("v1", "v2") or not account:
            raise ValueError(f"not a source partition key: {key!r}")
        return cls(api, None if account == PLATFORM else account)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.key


def ms_to_rfc3339(ms: int) -> str:
    """Unix milliseconds -> RFC 3339 with milliseconds, as Stripe's v2 API writes it."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rfc3339_to_ms(text: str) -> int:
    """RFC 3339 (with or without fraction, Z or offset) -> unix milliseconds."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return round(dt.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Event:
    """An event as read from Stripe, plus the few fields every stage needs pre-extracted."""

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

    @property
    def partition(self) -> SourcePartition:
        return SourcePartition(self.api, self.account)

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

"""Views: renders stored events, objects and ground truth to Stripe's JSON bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from ingestor.sim.catalog import TypeInfo
from ingestor.sim.ids import RANDOM_CHARS, SERIAL_CHARS, serial_of, token, uuid_token
from ingestor.sim.render import (
    default_status,
    event_template,
    jstr,
    object_template,
    rfc3339_ms,
    thin_template,
)

if TYPE_CHECKING:
    from ingestor.sim.simulator import Simulator

ID_LEN = RANDOM_CHARS + SERIAL_CHARS
EVT_PREFIX = {"v1": "evt_", "v2": "evt_test_"}
CACHE_MAX = 200_000
TRUTH_SEGMENT = 20_000


class Views:
    """Byte rendering with per-kind templates; ids live in fixed-width blobs (24 bytes each)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.evt_blob = bytearray()
        self.obj_blob = bytearray()
        self.type_json: list[bytes] = []
        examples = sim.catalog.examples
        slim = sim.scenario.slim_objects
        self.obj_tpl = [object_template(k, examples, slim=slim) for k in sim.kinds]
        self.default_status = [jstr(default_status(k, examples)) for k in sim.kinds]
        self.evt_tpl = {(a, p): event_template(a, p) for a in (False, True) for p in (False, True)}
        self.thin_tpl = {
            (c, r, d): thin_template(c, r, d)
            for c in (False, True)
            for r in (False, True)
            for d in (False, True)
        }
        self.version = jstr(sim.scenario.api_version)
        pad = sim.scenario.metadata_padding_bytes
        self.padding = {"sim_padding": "x" * pad} if pad else {}
        self.cache: dict[int, bytes] = {}
        self.truth_segments: list[bytes] = []
        self.truth_rows: list[bytes] = []
        self.truth_done = 0

    # --- ids -----------------------------------------------------------------------------------

    def add_type(self, info: TypeInfo) -> None:
        self.type_json.append(jstr(info.name))

    def add_event(self, serial: int, api: str) -> None:
        self.evt_blob += self.sim.evt_ids.body(serial).encode()

    def add_object(self, obj: int) -> None:
        kind = self.sim.kinds[self.sim.objects.kind[obj]]
        self.obj_blob += self.sim.obj_ids[kind.name].body(obj).encode()

    def api_of(self, serial: int) -> str:
        return self.sim.types[self.sim.events.type_ix[serial]].api

    def event_id(self, serial: int) -> str:
        body = self.evt_blob[serial * ID_LEN : (serial + 1) * ID_LEN].decode()
        return EVT_PREFIX[self.api_of(serial)] + body

    def object_id(self, obj: int) -> str:
        kind = self.sim.kinds[self.sim.objects.kind[obj]]
        return kind.id_prefix + self.obj_blob[obj * ID_LEN : (obj + 1) * ID_LEN].decode()

    def find_event(self, event_id: str) -> int | None:
        """The serial of an event id this simulator made (visible or not), else None."""
        for api, prefix in EVT_PREFIX.items():
            serial = serial_of(event_id, prefix)
            if serial is not None and serial < len(self.sim.events):
                body = self.evt_blob[serial * ID_LEN : (serial + 1) * ID_LEN]
                if body == event_id[len(prefix) :].encode() and self.api_of(serial) == api:
                    return serial
        return None

    def find_object(self, kind_ix: int, object_id: str) -> int | None:
        prefix = self.sim.kinds[kind_ix].id_prefix
        obj = serial_of(object_id, prefix)
        if obj is None or obj >= len(self.sim.objects) or self.sim.objects.kind[obj] != kind_ix:
            return None
        if self.obj_blob[obj * ID_LEN : (obj + 1) * ID_LEN] != object_id[len(prefix) :].encode():
            return None
        return obj

    # --- objects -------------------------------------------------------------------------------

    def object_bytes(self, obj: int, version: int, status: bytes | None) -> bytes:
        objects = self.sim.objects
        kind_ix = objects.kind[obj]
        kind = self.sim.kinds[kind_ix]
        created_ms = objects.created_ms[obj]
        created = jstr(rfc3339_ms(created_ms)) if kind.v2_style else b"%d" % (created_ms // 1000)
        meta = orjson.dumps({"sim_version": str(version), **self.padding})
        body = self.obj_tpl[kind_ix].render(
            {
                "ID": jstr(self.object_id(obj)),
                "CREATED": created,
                "META": meta,
                "STATUS": status or self.default_status[kind_ix],
            }
        )
        extras = objects.extras.get(obj)
        if extras:
            body = orjson.dumps({**orjson.loads(body), **extras})
        return body

    def current_object(self, obj: int) -> bytes:
        objects = self.sim.objects
        status = objects.status[obj]
        return self.object_bytes(obj, objects.version[obj], jstr(status) if status else None)

    def related_url(self, obj: int) -> str:
        kind = self.sim.kinds[self.sim.objects.kind[obj]]
        return f"{kind.collection}/{self.object_id(obj)}"

    # --- events --------------------------------------------------------------------------------

    def _request(self, serial: int) -> bytes:
        # Three of four events come from an API request, the rest from Stripe itself.
        if serial % 4 == 0:
            return b'{"id":null,"idempotency_key":null}'
        h = self.sim.seed * 1_000_003 + serial
        return b'{"id":"req_%s","idempotency_key":"%s"}' % (
            token(h).encode(),
            uuid_token(h).encode(),
        )

    def v1_event(self, serial: int) -> bytes:
        cached = self.cache.get(serial)
        if cached is not None:
            return cached
        ev = self.sim.events
        type_ix = ev.type_ix[serial]
        info = self.sim.types[type_ix]
        account = self.sim.event_account.get(serial) or ev.streams[ev.stream[serial]].account
        version = ev.version[serial]
        previous = info.action == "updated" and version > 1
        status = jstr(info.status) if info.status else None
        values = {
            "ID": jstr(self.event_id(serial)),
            "ACCOUNT": jstr(account) if account else b"",
            "VERSION": self.version,
            "CREATED": b"%d" % (ev.created_ms[serial] // 1000),
            "OBJECT": self.object_bytes(ev.obj[serial], version, status),
            "PREVIOUS": b'{"sim_version":"%d"}' % (version - 1),
            "WEBHOOKS": b"%d" % (serial % 3),
            "REQUEST": self._request(serial),
            "TYPE": self.type_json[type_ix],
        }
        body = self.evt_tpl[(account is not None, previous)].render(values)
        self._remember(serial, body)
        return body

    def v2_event(self, serial: int, *, full: bool = False) -> bytes:
        if not full:
            cached = self.cache.get(serial)
            if cached is not None:
                return cached
        ev = self.sim.events
        type_ix = ev.type_ix[serial]
        obj = ev.obj[serial]
        account = self.sim.events.streams[ev.stream[serial]].account
        related = b""
        if obj >= 0:
            kind = self.sim.kinds[self.sim.objects.kind[obj]]
            related = orjson.dumps(
                {"id": self.object_id(obj), "type": kind.name, "url": self.related_url(obj)}
            )
        reason = b'{"type":"request","request":%s}' % self._request(serial)
        values = {
            "ID": jstr(self.event_id(serial)),
            "TYPE": self.type_json[type_ix],
            "CREATED": jstr(rfc3339_ms(ev.created_ms[serial])),
            "ACCOUNT": jstr(account) if account else b"",
            "REASON": reason if serial % 4 else b"null",
            "RELATED": related,
            "DATA": b"{}",
        }
        body = self.thin_tpl[(account is not None, obj >= 0, full)].render(values)
        if not full:
            self._remember(serial, body)
        return body

    def event(self, serial: int) -> bytes:
        return self.v1_event(serial) if self.api_of(serial) == "v1" else self.v2_event(serial)

    def warm(self) -> int:
        """Renders the stored events (the first CACHE_MAX) into the cache; returns how many.

        A benchmark calls it before its clock starts. Stripe's servers do not run on the
        ingestor's cores, but this simulator does: rendering 40k events costs it about a
        CPU-second, which the first run against a fresh simulator would pay and a later one
        (cache warm) would not, skewing any comparison of two runs on one simulator.
        """
        count = min(len(self.sim.events), CACHE_MAX)
        for serial in range(count):
            if serial not in self.cache:
                self.event(serial)
        return count

    def _remember(self, serial: int, body: bytes) -> None:
        # Bounded: tail re-reads hit the cache, a 1M backfill does not pin every body in memory.
        if len(self.cache) >= CACHE_MAX:
            self.cache.clear()
        self.cache[serial] = body

    # --- ground truth --------------------------------------------------------------------------

    def _truth_row(self, serial: int) -> bytes:
        ev, sim = self.sim.events, self.sim
        info = sim.types[ev.type_ix[serial]]
        obj = ev.obj[serial]
        created_ms = ev.created_ms[serial]
        created = b"%d" % (created_ms // 1000) if info.api == "v1" else jstr(rfc3339_ms(created_ms))
        account = sim.event_account.get(serial) or ev.streams[ev.stream[serial]].account
        return (
            b'{"id":"%s","api":"%s","type":%s,"object_id":%s,"account":%s,"created":%s,'
            b'"created_ms":%d,"visible_ms":%d,"serial":%d}'
            % (
                self.event_id(serial).encode(),
                info.api.encode(),
                self.type_json[ev.type_ix[serial]],
                jstr(self.object_id(obj)) if obj >= 0 else b"null",
                jstr(account) if account else b"null",
                created,
                created_ms,
                ev.visible_at[serial],
                serial,
            )
        )

    def truth_bytes(self) -> bytes:
        """`{"count": N, "events": [...]}` in order of visibility; rows are rendered once and
        kept in joined segments, so repeated calls on a 1M history stay cheap."""
        order = self.sim.events.visible_order
        while self.truth_done < len(order):
            self.truth_rows.append(self._truth_row(order[self.truth_done]))
            self.truth_done += 1
            if len(self.truth_rows) >= TRUTH_SEGMENT:
                self.truth_segments.append(b",".join(self.truth_rows))
                self.truth_rows = []
        parts = [*self.truth_segments]
        if self.truth_rows:
            parts.append(b",".join(self.truth_rows))
        return b'{"count":%d,"events":[%s]}' % (self.truth_done, b",".join(parts))

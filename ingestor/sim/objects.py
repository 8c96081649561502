"""Object storage: the current state of every object events refer to, as compact columns."""

from __future__ import annotations

from array import array
from typing import Any


class ObjectStore:
    """Objects by serial: kind, owner, version (bumped by each event on it), status, deleted."""

    def __init__(self) -> None:
        self.kind: array[int] = array("B")
        self.account: array[int] = array("H")
        self.created_ms: array[int] = array("q")
        self.version: array[int] = array("l")
        self.deleted = bytearray()
        self.status: list[str | None] = []
        # Extra fields for the few objects made through the API (uploaded files).
        self.extras: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.kind)

    def add(self, kind: int, account: int, created_ms: int) -> int:
        serial = len(self.kind)
        self.kind.append(kind)
        self.account.append(account)
        self.created_ms.append(created_ms)
        self.version.append(0)
        self.deleted.append(0)
        self.status.append(None)
        return serial

    def touch(self, serial: int, status: str | None, deletes: bool) -> int:
        """Applies one event to the object; returns its new version."""
        self.version[serial] += 1
        if status is not None:
            self.status[serial] = status
        if deletes:
            self.deleted[serial] = 1
        return self.version[serial]

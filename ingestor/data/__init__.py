"""Project data shipped in the package: Stripe's event type names (`event-types.txt`)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def event_types() -> dict[str, tuple[str, ...]]:
    """Event type names by api ("v1", "v2"), in file order; dev/gen_event_types.py writes them."""
    sections: dict[str, list[str]] = {"v1": [], "v2": []}
    current: list[str] | None = None
    text = resources.files(__name__).joinpath("event-types.txt").read_text(encoding="utf-8")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections[line[1:-1]]
        elif current is not None:
            current.append(line)
    return {api: tuple(names) for api, names in sections.items()}

"""Plain-JSON Bundle helpers: entry resources, links, and splitting a transaction that is too large."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["bundle_link", "replay_safe", "split_transaction"]

#: requests that change nothing when repeated (HTTP's idempotent methods); PATCH and a plain POST are not
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})


def bundle_link(bundle: dict[str, Any], relation: str) -> str | None:
    """The ``url`` of ``Bundle.link`` with ``relation`` (None when absent)."""
    for link in bundle.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == relation and isinstance(link.get("url"), str):
            url: str = link["url"]
            return url
    return None


def replay_safe(bundle: dict[str, Any]) -> bool:
    """Whether posting ``bundle`` again after the server may have processed it duplicates nothing: every entry
    is a read, an update or delete (``PUT``/``DELETE``, idempotent; with ``If-Match`` a replay after the
    commit answers 412 instead of writing), or a conditional create (``POST`` with ``ifNoneExist``: a replay
    finds what the first one created). The caller of a replayed Bundle must read a 412 as "maybe already
    written" and check (:func:`fhir_adapter.writeback.sink.write_subject` does)."""
    for entry in bundle.get("entry") or []:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            return False
        method = str(request.get("method", "")).upper()
        if method not in _IDEMPOTENT_METHODS and not (method == "POST" and request.get("ifNoneExist")):
            return False
    return True


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _entry_keys(entry: dict[str, Any]) -> set[str]:
    """What other entries may use to point at this entry: its fullUrl, ``Type/id`` of its resource, and the
    ``Type/id`` of a ``PUT Type/id`` request."""
    keys: set[str] = set()
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str) and full_url:
        keys.add(full_url)
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str) and resource.get("id"):
        keys.add(f"{resource['resourceType']}/{resource['id']}")
    request = entry.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str) and "?" not in request["url"]:
        parts = request["url"].strip("/").split("/")
        if len(parts) == 2:
            keys.add("/".join(parts))
    return keys


def split_transaction(bundle: dict[str, Any], max_entries: int) -> list[dict[str, Any]]:
    """Split a transaction (or batch) Bundle into Bundles of at most ``max_entries`` entries.

    Entries that refer to each other — a reference equal to another entry's ``fullUrl`` (typically
    ``urn:uuid:...``), to its ``Type/id``, or to the ``Type/id`` it is ``PUT`` to — are kept in the same
    Bundle, because a server resolves such references only within one transaction. Order is preserved: groups
    are packed into consecutive parts in the order of their first entry, and entries keep their relative
    order within a part.

    Each part is atomic on its own but the parts together are not: a failure of part 2 does not roll back
    part 1. That is acceptable for the adapter's write-back, whose entries are conditional updates (re-running
    converges). Bundle-level elements other than ``entry`` are copied to every part (shallow copies; entries
    are shared, not copied). A Bundle without entries gives an empty list.

    Raises ValueError when ``max_entries < 1``, when ``bundle`` is not a Bundle, or when one group of entries
    referring to each other is larger than ``max_entries`` (it cannot be split without breaking references).
    """
    if max_entries < 1:
        raise ValueError(f"max_entries must be at least 1, got {max_entries}")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError("split_transaction needs a Bundle resource (a dict with resourceType 'Bundle')")
    entries: list[dict[str, Any]] = list(bundle.get("entry") or [])
    if not entries:
        return []

    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, entry in enumerate(entries):
        for key in _entry_keys(entry):
            owner.setdefault(key, index)
    for index, entry in enumerate(entries):
        for text in _strings(entry.get("resource")):
            target = owner.get(text)
            if target is not None:
                a, b = find(index), find(target)
                if a != b:
                    parent[max(a, b)] = min(a, b)

    groups: dict[int, list[int]] = {}
    for index in range(len(entries)):
        groups.setdefault(find(index), []).append(index)

    parts: list[list[int]] = []
    for root in sorted(groups):
        members = groups[root]
        if len(members) > max_entries:
            first = entries[members[0]].get("fullUrl") or f"entry {members[0]}"
            raise ValueError(
                f"{len(members)} entries refer to each other (starting at {first}) but a transaction may "
                f"hold only {max_entries}; raise max_transaction_entries or reference by identifier"
            )
        if parts and len(parts[-1]) + len(members) <= max_entries:
            parts[-1].extend(members)
        else:
            parts.append(list(members))

    header = {key: value for key, value in bundle.items() if key != "entry"}
    return [{**header, "entry": [entries[i] for i in sorted(part)]} for part in parts]

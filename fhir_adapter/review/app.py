"""``fhir-adapter review --results OUT``: the local review web app (Starlette, server-rendered Jinja2).

Pages: ``/`` subjects with progress; ``/s/<subject>`` its visits → items (``?filter=needs-review``) and its
endpoints from ``results/study.json``; ``/s/<subject>/<visit>/<item>`` one item: the rule's pick, every
candidate, rule, window and flags, the decision forms and the item's history; ``/audit`` every decision, with
the hash chain verified. A path names the subject, visit and item by their file names
(:func:`~fhir_adapter.job.outpaths.subject_file_name`: ``101/009`` → ``101_2F009``), never by the IDs
themselves: an ID with ``/``, ``%``, ``?``, ``#`` or a space reaches its page (a server decodes ``%2F`` before
routing). Reads ``OUT/review/candidates/``, ``OUT/results/study.json`` and the decision file;
writes only decisions (append-only, :mod:`.store`).

Bound to 127.0.0.1; requests must name 127.0.0.1 or localhost as host (no DNS rebinding) and every form
carries a token made at start (no cross-site posts from other pages open in the browser). No page can be
shown in another site's frame (``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'`` on every
response: no clickjacking of the decision buttons). No asset is loaded from anywhere: CSS and the few lines of
keyboard script are inline.

A decision form also carries what it was made against — the item's latest entry number (``seen_seq``) and
:func:`~.store.shown_hash` of its candidates; a POST from a page older than either is refused with 409
("changed since you opened it: reload"), never recorded over another reviewer's newer decision or query.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_adapter.disk_full import is_disk_full
from fhir_adapter.job.outpaths import subject_file_name
from fhir_adapter.job.outswap import reading
from fhir_adapter.review.apply import REVIEWED, status_of
from fhir_adapter.review.run import CANDIDATES_DIR
from fhir_adapter.review.store import (
    ACTIONS,
    DecisionError,
    DecisionStore,
    StaleError,
    TamperedError,
    new_decision,
    shown_hash,
)
from fhir_adapter.version import __version__

NEEDS_REVIEW = ("unreviewed", "query", "re-review")
ACTION_LABELS = {"accept": "accepted the rule's pick", "choose": "chose another candidate",
                 "not_available": "not available", "query": "query"}


@dataclass
class ReviewConfig:
    results: Path
    reviewer: str
    state_dir: Path | None = None
    token: str = ""


@dataclass(frozen=True)
class _Listing:
    """What the subjects' list needs of one candidates file: the subject, its arm and Day 1, and per item
    (visit, item) the rule's pick and the candidates as compact JSON (an item's status compares them with its
    decision's)."""

    path: Path
    subject_id: str
    arm: Any
    day1: Any
    candidates: dict[tuple[str, str], bytes]
    #: (visit, item) -> (the hashes of the decision it was compared with, the status that gave): the list does
    #: not parse an item's candidates again until a run replaces the file (a new listing) or the decision (or a
    #: query raised after it) changes
    statuses: dict[tuple[str, str], tuple[tuple[Any, Any], str]] = field(default_factory=dict, compare=False)


class Workspace:
    """What the app reads from OUT, read again on each request (a rerun may have replaced it), under OUT's swap
    lock (:mod:`fhir_adapter.job.outswap`): never while a run moves its outputs in.

    A file is parsed when it is new or a run replaced it (its inode, mtime and size changed). Of a candidates
    file the app keeps what the subjects' list needs (:class:`_Listing`: each item's candidates as compact
    JSON bytes), of results/study.json each subject's visits as compact JSON; a subject's page reads that
    subject's candidates file again. Memory stays a few bytes per value instead of Python objects for every
    subject's candidates (340 subjects: 460 MB as objects), and a page parses only the subject it shows."""

    def __init__(self, cfg: ReviewConfig) -> None:
        self.cfg = cfg
        self.store = DecisionStore.under(cfg.results, cfg.state_dir)
        #: each candidates file read: its (inode, mtime, size) when parsed, and what the subjects' list needs
        self._listings: dict[Path, tuple[tuple[int, int, int], _Listing]] = {}
        #: results/study.json: its (inode, mtime, size) when parsed, and each subject's visits as compact JSON
        self._visits: tuple[tuple[int, int, int], dict[str, bytes]] | None = None

    @staticmethod
    def _key(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _listed(self) -> dict[str, _Listing]:
        """Each subject's listing, files parsed again only when a run replaced them (call under :func:`reading`)."""
        folder = self.cfg.results / CANDIDATES_DIR
        paths = sorted(folder.glob("*.json")) if folder.exists() else []
        for path in paths:
            key = self._key(path)
            cached = self._listings.get(path)
            if cached is None or cached[0] != key:
                doc = orjson.loads(path.read_bytes())
                self._listings[path] = key, _Listing(
                    path, doc["subject_id"], doc.get("arm"), doc.get("day1"),
                    # copied to their length: orjson's bytes keep a buffer of 4 KB or more
                    {(e["visit"], e["item"]): bytes(memoryview(orjson.dumps(
                        {"picked": e.get("picked"), "candidates": e["candidates"]}))) for e in doc["items"]})
        for gone in set(self._listings) - set(paths):
            del self._listings[gone]
        return {listing.subject_id: listing for _, listing in (self._listings[p] for p in paths)}

    def listings(self) -> list[_Listing]:
        """Every subject's listing, in file order."""
        with reading(self.cfg.results):   # not while a run moves its outputs in
            return list(self._listed().values())

    def subject(self, subject_id: str) -> dict[str, Any] | None:
        """One subject's candidates document (None: no such subject), read from its file."""
        with reading(self.cfg.results):
            listing = self._listed().get(subject_id)
            if listing is None:
                return None
            doc: dict[str, Any] = orjson.loads(listing.path.read_bytes())
            return doc

    def subject_named(self, name: str) -> dict[str, Any] | None:
        """The candidates document of the subject whose file name (:func:`segment`) is ``name``."""
        with reading(self.cfg.results):
            listing = next((x for x in self._listed().values() if segment(x.subject_id) == name), None)
            if listing is None:
                return None
            doc: dict[str, Any] = orjson.loads(listing.path.read_bytes())
            return doc

    def endpoints(self, subject_id: str) -> list[dict[str, Any]]:
        """The subject's visits in results/study.json (the file holds every subject: 23 MB for 340)."""
        path = self.cfg.results / "results" / "study.json"
        with reading(self.cfg.results):
            if not path.exists():
                return []
            key = self._key(path)
            if self._visits is None or self._visits[0] != key:
                study = orjson.loads(path.read_bytes())
                self._visits = key, {str(row.get("subject_id")): bytes(memoryview(orjson.dumps(row.get("visits", []))))
                                     for row in study.get("subjects", [])}
        data = self._visits[1].get(subject_id)
        return [] if data is None else list(orjson.loads(data))

    def decided(self) -> tuple[dict[tuple[str, str, str], dict[str, Any]], list[dict[str, Any]], str | None]:
        chain = self.store.read_cached()
        return chain.current(), chain.entries, chain.torn


def _items(doc: dict[str, Any], current: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The subject's items with their live review status (decisions made since the run count)."""
    out = []
    for e in doc["items"]:
        d = current.get((doc["subject_id"], e["visit"], e["item"]))
        status, diffs = status_of(e, d)
        picked = next((c for c in e["candidates"] if c["id"] == e["picked"]), None)
        out.append({**e, "status": status, "changes": diffs, "decision": d, "picked_value": picked,
                    "not_available": bool(d and d["action"] == "not_available"),
                    "used_value": _used(e, d) or picked})
    return out


def _used(entry: dict[str, Any], decision: dict[str, Any] | None) -> dict[str, Any] | None:
    """The candidate an accept or choose decision gives the item, as the run has it now (its current value, not
    the one shown at the decision); None when there is no such decision or the candidate is gone (the run then
    uses the rule's pick: :func:`fhir_adapter.review.apply.apply_decisions`)."""
    if decision is None or decision["action"] not in ("accept", "choose"):
        return None
    return next((c for c in entry["candidates"] if c["id"] == decision.get("candidate")), None)


def _listed_progress(listing: _Listing, current: dict[tuple[str, str, str], dict[str, Any]]) -> dict[str, int]:
    """:func:`_progress` of a subject from its listing: an item's candidates are parsed only when it has a
    decision to compare them with, and once per decision (:attr:`_Listing.statuses`)."""
    statuses = []
    for (visit, item), candidates in listing.candidates.items():
        d = current.get((listing.subject_id, visit, item))
        if d is None:
            statuses.append({"status": "unreviewed"})
            continue
        # the decision by its chain hash (a settling one with a query raised after it: both hashes)
        mark = (d.get("hash"), (d.get("open_query") or {}).get("hash"))
        known = listing.statuses.get((visit, item))
        if known is None or known[0] != mark or mark[0] is None:
            known = (mark, status_of(orjson.loads(candidates), d)[0])
            listing.statuses[(visit, item)] = known
        statuses.append({"status": known[1]})
    return _progress(statuses)


def _progress(items: list[dict[str, Any]]) -> dict[str, int]:
    done = sum(1 for i in items if i["status"] in REVIEWED)
    return {"done": done, "total": len(items), "needs": sum(1 for i in items if i["status"] in NEEDS_REVIEW),
            "pct": round(100 * done / len(items)) if items else 100}


def segment(text: str) -> str:
    """A subject, visit or item ID as one path segment: its file name (``[A-Za-z0-9.~_-]`` only)."""
    return subject_file_name(text)


def _url(page: str, *ids: str) -> str:
    """``/<page>/<id>/…`` with each ID as its :func:`segment`."""
    return "/" + "/".join([page, *(segment(i) for i in ids)])


def _entry(doc: dict[str, Any], visit: str, item: str) -> dict[str, Any] | None:
    """The subject's (visit, item) entry named by its path segments."""
    return next((e for e in doc["items"] if segment(e["visit"]) == visit and segment(e["item"]) == item), None)


NO_FRAMING = "frame-ancestors 'none'"


class _NotFramed:
    """ASGI wrapper: every response says no other page may frame it (``X-Frame-Options: DENY``, and
    ``frame-ancestors 'none'`` added to the response's Content-Security-Policy, its other directives kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_not_framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = "DENY"
                csp = [d.strip() for d in headers.get("Content-Security-Policy", "").split(";")
                       if d.strip() and not d.strip().lower().startswith("frame-ancestors")]
                headers["Content-Security-Policy"] = "; ".join([*csp, NO_FRAMING])
            await send(message)

        await self.app(scope, receive, send_not_framed)


class _ReviewApp(Starlette):
    """The app, its error pages (400 of a foreign host, 500) included, inside :class:`_NotFramed`."""

    def build_middleware_stack(self) -> ASGIApp:
        return _NotFramed(super().build_middleware_stack())


def create_app(cfg: ReviewConfig) -> Starlette:
    cfg.token = cfg.token or secrets.token_urlsafe(24)
    ws = Workspace(cfg)
    env = Environment(loader=PackageLoader("fhir_adapter.review", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    env.globals.update(url=_url, version=__version__, reviewer=cfg.reviewer, token=cfg.token,
                       action_labels=ACTION_LABELS)

    def render(name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status_code)

    def problem(message: str, status_code: int) -> HTMLResponse:
        return render("problem.html.j2", status_code=status_code, message=message)

    def stale(reload: str, message: str, only: bool) -> HTMLResponse:
        """409: the page a decision came from is out of date; nothing was recorded."""
        return render("problem.html.j2", status_code=409, message=message,
                      reload=reload + ("?filter=needs-review" if only else ""))

    async def index(request: Request) -> Response:
        try:
            current, _, torn = ws.decided()
        except TamperedError as exc:
            return problem(str(exc), 500)
        rows = [{"subject_id": x.subject_id, "arm": x.arm, "day1": x.day1, **_listed_progress(x, current)}
                for x in ws.listings()]
        return render("index.html.j2", subjects=rows, results=str(cfg.results), torn=torn,
                      decisions_file=str(ws.store.path))

    async def subject(request: Request) -> Response:
        name = request.path_params["subject"]
        only = request.query_params.get("filter") == "needs-review"
        try:
            current, _, torn = ws.decided()
        except TamperedError as exc:
            return problem(str(exc), 500)
        doc = ws.subject_named(name)
        if doc is None:
            return problem(f"no subject {name} in {cfg.results / CANDIDATES_DIR}: run `fhir-adapter run` first", 404)
        sid = doc["subject_id"]
        items = _items(doc, current)
        shown = [i for i in items if not only or i["status"] in NEEDS_REVIEW]
        visits: dict[str, dict[str, Any]] = {}
        for i in shown:
            v = visits.setdefault(i["visit"], {"visit": i["visit"], "label": i["visit_label"],
                                               "date": i["visit_date"], "rows": []})
            v["rows"].append({**i, "shown_hash": shown_hash(i)} if i["status"] == "unreviewed" else i)
        present = {(i["visit"], i["item"]) for i in items}
        orphans = [{**d, "changes": status_of(None, d)[1]} for (s, v, it), d in sorted(current.items())
                   if s == sid and (v, it) not in present]
        return render("subject.html.j2", subject_id=sid, doc=doc, visits=list(visits.values()),
                      progress=_progress(items), only=only, endpoints=ws.endpoints(sid), torn=torn,
                      orphans=orphans)

    async def item(request: Request) -> Response:
        name, visit_name, item_name = (request.path_params[k] for k in ("subject", "visit", "item"))
        try:
            current, entries, torn = ws.decided()
        except TamperedError as exc:
            return problem(str(exc), 500)
        doc = ws.subject_named(name)
        if doc is None:
            return problem(f"no subject {name}", 404)
        sid = doc["subject_id"]
        entry = _entry(doc, visit_name, item_name)
        if entry is None:
            return problem(f"no item {item_name} at visit {visit_name} of subject {sid}", 404)
        visit, item_id = entry["visit"], entry["item"]
        items = _items(doc, current)
        pos = next(n for n, i in enumerate(items) if i["visit"] == visit and i["item"] == item_id)
        only = request.query_params.get("filter") == "needs-review"
        seq = [n for n, i in enumerate(items) if not only or i["status"] in NEEDS_REVIEW or n == pos]
        k = seq.index(pos)
        prev_i = items[seq[k - 1]] if k > 0 else None
        next_i = items[seq[k + 1]] if k + 1 < len(seq) else None
        history = [e for e in entries if (e["subject_id"], e["visit"], e["item"]) == (sid, visit, item_id)]
        return render("item.html.j2", subject_id=sid, it=items[pos], prev_i=prev_i, next_i=next_i, only=only,
                      history=history, progress=_progress(items), torn=torn,
                      error=request.query_params.get("error"),
                      seen_seq=history[-1]["seq"] if history else 0, shown_hash=shown_hash(entry))

    async def decide(request: Request) -> Response:
        name, visit_name, item_name = (request.path_params[k] for k in ("subject", "visit", "item"))
        form = await request.form()
        if not secrets.compare_digest(str(form.get("token", "")), cfg.token):
            return problem("this form was not made by this review session: reload the page", 403)
        only = form.get("filter") == "needs-review"
        doc = ws.subject_named(name)
        entry = _entry(doc, visit_name, item_name) if doc is not None else None
        if doc is None or entry is None:
            return problem(f"no item {item_name} at visit {visit_name} of subject {name}", 404)
        sid, visit, item_id = doc["subject_id"], entry["visit"], entry["item"]
        base = _url("s", sid, visit, item_id)
        action = str(form.get("action", ""))
        seen = str(form.get("seen_seq", ""))
        # ASCII digits only, and no longer than a sequence number can be (str.isdigit takes "²", int() fails on it)
        if not (seen.isascii() and seen.isdigit() and len(seen) <= 18) or not form.get("shown_hash"):
            return problem(f"{sid} {visit} {item_id}: this form does not say what it was made against (the item's "
                           "last decision and the candidates shown): reload the page and decide again", 400)
        if not secrets.compare_digest(str(form.get("shown_hash")), shown_hash(entry)):
            return stale(base, f"{sid} {visit} {item_id} changed since you opened it: the candidates are not the "
                               "ones you were shown (a run has replaced them). Reload the page, look at them and "
                               "decide again; nothing was recorded.", only)
        try:
            d = new_decision(subject_id=sid, visit=visit, item=item_id, action=action, reviewer=cfg.reviewer,
                             shown=entry, candidate=str(form.get("candidate") or "") or None,
                             reason=str(form.get("reason") or ""), seen_seq=int(seen))
            ws.store.append(d)  # refused (StaleError) when the item got another entry since the page was made
        except StaleError as exc:
            return stale(base, str(exc), only)
        except (DecisionError, TamperedError) as exc:
            return RedirectResponse(f"{base}?error={quote(str(exc))}" + ("&filter=needs-review" if only else ""),
                                    status_code=303)
        except OSError as exc:
            return not_recorded(exc)
        # on to the next item that still needs review
        current, _, _ = ws.decided()
        items = _items(doc, current)
        pos = next(n for n, i in enumerate(items) if i["visit"] == visit and i["item"] == item_id)
        after = [i for i in items[pos + 1:] + items[:pos] if i["status"] in NEEDS_REVIEW] if only else items[pos + 1:]
        target = _url("s", sid, after[0]["visit"], after[0]["item"]) if after else _url("s", sid)
        return RedirectResponse(target + ("?filter=needs-review" if only else ""), status_code=303)

    def not_recorded(exc: OSError) -> Response:
        """The decision file could not be written (a full disk): the reviewer is told the decision is lost."""
        full = is_disk_full(exc)
        return problem(f"your decision was NOT recorded: {exc.strerror or exc} writing {ws.store.path}. "
                       + ("Free space on that disk, then reload the page and decide again." if full else
                          "Tell the person who runs the review app, then reload the page and decide again."),
                       507 if full else 500)

    async def accept_visit(request: Request) -> Response:
        """Accept the rule's pick for the unreviewed items of one visit that the reviewer saw listed."""
        name, visit_name = request.path_params["subject"], request.path_params["visit"]
        form = await request.form()
        if not secrets.compare_digest(str(form.get("token", "")), cfg.token):
            return problem("this form was not made by this review session: reload the page", 403)
        listed = {str(x) for x in form.getlist("item")}

        doc = ws.subject_named(name)
        visit = next((e["visit"] for e in doc["items"] if segment(e["visit"]) == visit_name), None) if doc else None
        if doc is None or visit is None:
            return problem(f"no visit {visit_name} of subject {name}", 404)
        sid = doc["subject_id"]
        only = form.get("filter") == "needs-review"
        try:
            current, _, _ = ws.decided()
            todo = [i for i in _items(doc, current) if i["visit"] == visit and i["item"] in listed]
            changed = [i["item"] for i in todo if i["status"] != "unreviewed"
                       or not secrets.compare_digest(str(form.get(f"shown-{i['item']}", "")), shown_hash(i))]
            if changed:
                return stale(_url("s", sid), f"{sid} {visit}: {', '.join(changed)} changed since you opened the "
                                             "page (decided by someone else, or new candidates from a run). Reload "
                                             "the page and decide again; nothing was recorded.", only)
            ws.store.append_many([
                new_decision(subject_id=sid, visit=visit, item=i["item"], action="accept", reviewer=cfg.reviewer,
                             shown=i, reason="accepted with the other items of the visit", seen_seq=0)
                for i in todo])
        except StaleError as exc:
            return stale(_url("s", sid), str(exc), only)
        except (DecisionError, TamperedError) as exc:
            return problem(str(exc), 400)
        except OSError as exc:
            return not_recorded(exc)
        return RedirectResponse(_url("s", sid) + ("?filter=needs-review" if only else ""), status_code=303)

    async def audit(request: Request) -> Response:
        try:
            _, entries, torn = ws.decided()
        except TamperedError as exc:
            return problem(str(exc), 500)
        return render("audit.html.j2", entries=list(reversed(entries)), torn=torn,
                      decisions_file=str(ws.store.path))

    routes = [
        Route("/", index),
        Route("/audit", audit),
        Route("/s/{subject}", subject),
        Route("/s/{subject}/{visit}/{item}", item),
        Route("/s/{subject}/{visit}/{item}/decide", decide, methods=["POST"]),
        Route("/s/{subject}/{visit}/accept-unreviewed", accept_visit, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])]
    return _ReviewApp(routes=routes, middleware=middleware)


def serve(cfg: ReviewConfig, port: int = 0, on_ready: Any = None) -> None:
    """Serve on 127.0.0.1:``port`` (0: a free port); ``on_ready(url)`` once it listens."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)  # connections from now on wait in the backlog until uvicorn accepts them
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        if on_ready:
            on_ready(url)
        server = uvicorn.Server(uvicorn.Config(create_app(cfg), log_level="warning", access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["ACTIONS", "ReviewConfig", "create_app", "serve"]

"""The review web app: one page per waiting case, answered by keyboard, kept at once.

Local and private: it listens on 127.0.0.1 only, on a free port, and every request must
carry the random token of the URL it printed (``?t=...``), so another user of the machine,
or a web page in the same browser, cannot read the pictures or write an answer. Requests
that change something are POSTs. Nothing the browser sends is a file path: cases and
images are named by ids this server issued, mapped to paths here, so no request reaches
a file the queue does not show.

Thumbnails come from the report's cache (backfill.reports.report.Thumbnails), so a case
the report already drew shows at once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from backfill.config.project import Project
from backfill.contracts.schemas import CROP_BOX
from backfill.db.cells import format_time
from backfill.reports.report import Thumbnails
from backfill.review import store
from backfill.review.apply import allowed, answer_problem
from backfill.review.queue import (
    LABELS,
    Case,
    build_queue,
    counts,
    read_tables,
    standing,
    suggested_groups,
    waiting,
)

if TYPE_CHECKING:
    import uvicorn

HOST = "127.0.0.1"
# Long side of a thumbnail: the report's (validate.thumbnail_px) for a plain render, twice
# that for the kept render with its box and for a final, as the report draws a review
# case, so that what the report drew is in the cache and a page shows it at once.
PX = 160


@dataclass
class Session:
    """What the app serves: one project's tables, its folders and its answers file."""

    name: str
    tables: dict[str, pd.DataFrame]
    original_dir: Path
    final_dir: Path
    reviews: Path  # reviews/<project>.jsonl
    thumbs: Thumbnails  # saved when the app stops: the next start shows them at once
    # Image ids this server issued -> (file, long side, box). Random, so an id says
    # nothing of the path and cannot be guessed.
    images: dict[str, tuple[Path, int, list[float] | None]] = field(default_factory=dict)
    px: int = PX
    # When the tables were built (ISO, UTC): a case still in them with an older answer
    # is one the answer could not be applied to (queue.waiting). None: not known.
    built_at: str | None = None
    _issued: dict[tuple[Path, int, str], str] = field(default_factory=dict, repr=False)
    _indexed: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, project: Project) -> Session:
        tables = read_tables(project.output, project.name)
        scan = tables["scan"]
        hashed = scan[scan["content_hash"].notna()]
        folder = {"original": project.path("original_dir"), "final": project.path("final_dir")}
        thumbs = Thumbnails(project.cache_dir, project.settings.scan.max_pixels, {
            folder[s] / r: h for s, r, h in zip(hashed["source"], hashed["rel_path"],
                                                hashed["content_hash"], strict=True)})
        built = datetime.fromtimestamp(project.output("truth").stat().st_mtime, UTC)
        return cls(project.name, tables, folder["original"], folder["final"],
                   project.reviews, thumbs, px=project.settings.validate.thumbnail_px,
                   built_at=format_time(built))

    @cached_property
    def cases(self) -> list[Case]:
        """Every case of the tables, in order: built once (the tables do not change
        while the app runs), so a long queue costs each page one pass over it."""
        return build_queue(self.tables)

    def by_id(self, table: str) -> pd.DataFrame:
        """The groups or truth table indexed by group id (indexed once)."""
        if table not in self._indexed:
            self._indexed[table] = self.tables[table].set_index("group_id", drop=False)
        return self._indexed[table]

    def queue(self, answers: list[store.Answer] | None = None) -> list[Case]:
        """The cases that wait: those ``answers`` (the reviews file when None) do not
        settle (queue.waiting)."""
        if answers is None:
            answers = store.read(self.reviews)
        return waiting(self.cases, answers, self.built_at)

    def image(self, path: Path, box: list[float] | None = None, large: bool = False) -> str:
        """An id for the thumbnail of ``path`` (``box`` drawn; ``large``: twice the size),
        issued once per thumbnail."""
        px = self.px * (2 if large or box is not None else 1)
        held = (path, px, ",".join(map(str, box or [])))
        if held not in self._issued:
            self._issued[held] = secrets.token_urlsafe(12)
            self.images[self._issued[held]] = (path, px, box)
        return self._issued[held]


@cache  # a page looks its case up among all that wait: each digest is taken once
def case_id(case: Case) -> str:
    """A case's id on the page: a digest of its kind, content hashes and place, so the
    address shows no path."""
    text = "\n".join([case.kind, *(h or "-" for h in case.hashes), case.subject])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _box(row: pd.Series) -> list[float] | None:
    box = [row.get(c) for c in CROP_BOX]
    return None if any(v is None or pd.isna(v) for v in box) else [float(v) for v in box]


def case_view(session: Session, case: Case, answers: list[store.Answer]) -> dict[str, Any]:
    """What the page shows of ``case``: its renders (stage, image id; the kept one with the
    located box), the kept final, why it waits, and your answer to it (in ``answers``)
    that the last repro could not apply, if any."""
    view: dict[str, Any] = {"id": case_id(case), "kind": case.kind, "label": LABELS[case.kind],
                            "subject": case.subject, "reason": case.reason,
                            "confidence": case.confidence, "renders": [], "final": None,
                            "suggestions": [], "answers": list(allowed(case)), "chosen": 0,
                            "earlier": None}
    earlier = standing([case], answers).get(case)
    if earlier is not None:
        said = " ".join(f"{k} {v}" for k, v in sorted(earlier.decision.items()) if k != "action")
        view["earlier"] = f"{earlier.decision['action']} {said}".strip() + f", at {earlier.at}"
    groups, truth = session.by_id("groups"), session.by_id("truth")
    if case.group_id is not None and case.group_id in groups.index:
        group = groups.loc[case.group_id]
        decided = truth.loc[case.group_id] if case.group_id in truth.index else None
        kept = (None if decided is None or pd.isna(decided["user_selected_index"])
                else int(decided["user_selected_index"]))
        view["chosen"] = kept or 0
        for i, (rel, stage) in enumerate(zip(group["image_paths"], group["stages"],
                                             strict=True)):
            box = _box(decided) if i == kept else None
            view["renders"].append({"index": i, "stage": float(stage), "kept": i == kept,
                                    "image": session.image(session.original_dir / rel, box)})
        if decided is not None and isinstance(decided["final_path"], str):
            view["final"] = session.image(session.final_dir / decided["final_path"],
                                          large=True)
    elif case.kind == "orphan":
        view["final"] = session.image(session.final_dir / case.subject, large=True)
        # Each suggested group shown by its highest stage, the one most often kept.
        for i, group in enumerate(suggested_groups(session.tables, case)):
            last = groups.loc[group, "image_paths"][-1]
            view["suggestions"].append({"index": i, "group_id": group,
                                        "image": session.image(session.original_dir / last)})
    elif case.kind == "name_clash":  # a render left out of every group
        view["renders"].append({"index": 0, "stage": None, "kept": False,
                                "image": session.image(session.original_dir / case.subject)})
    return view


class TokenGate:
    """Refuse (403) every request that does not carry the session's token as ``?t=``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = Request(scope).query_params.get("t", "")
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                await Response("Forbidden: open the address `backfill review` printed.",
                               status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(session: Session, token: str) -> Starlette:
    """The app for ``session``, refusing every request without ``token``."""

    from jinja2 import Environment, select_autoescape

    template = Environment(autoescape=select_autoescape(default=True)).from_string(PAGE)

    def summary(queue: list[Case]) -> dict[str, Any]:
        n = counts(queue)
        return {"left": len(queue),
                "kinds": [{"kind": k, "label": LABELS[k], "left": v} for k, v in n.items()]}

    def find(queue: list[Case], wanted: str | None) -> Case | None:
        return next((c for c in queue if case_id(c) == wanted), None)

    def page(request: Request) -> Response:
        with session.lock:
            answers = store.read(session.reviews)
            queue = session.queue(answers)
            case = find(queue, request.query_params.get("case")) or (queue[0] if queue
                                                                        else None)
            view = case_view(session, case, answers) if case else None
            after = queue[queue.index(case) + 1] if case and case is not queue[-1] else None
        return HTMLResponse(template.render(
            project=session.name, token=token, case=view, **summary(queue),
            next=case_id(after) if after else ""))

    def queue_json(request: Request) -> Response:
        with session.lock:
            queue = session.queue()
        return JSONResponse({**summary(queue), "cases": [
            {"id": case_id(c), "kind": c.kind, "subject": c.subject, "reason": c.reason}
            for c in queue]})

    async def answer(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "send JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "send a JSON object"}, status_code=400)
        with session.lock:
            queue = session.queue()
            case = find(queue, body.get("case"))
            if case is None:
                return JSONResponse({"error": "no such case waits (answered already?)"},
                                    status_code=404)
            problem = answer_problem(case, body.get("decision"), session.tables)
            if problem:
                return JSONResponse({"error": problem}, status_code=400)
            store.append(session.reviews, store.Answer(case.kind, case.subject, case.hashes,
                                                       case.reason, body["decision"]))
            left = session.queue()
        return JSONResponse({**summary(left), "next": case_id(left[0]) if left else None})

    async def undo(request: Request) -> Response:
        with session.lock:
            undone = store.undo(session.reviews)
            left = session.queue()
        back = None
        if undone is not None:
            back = next((case_id(c) for c in standing(left, [undone])), None)
        return JSONResponse({**summary(left), "next": back})

    def image(request: Request) -> Response:
        held = session.images.get(request.path_params["id"])
        if held is None:
            return Response("no such image", status_code=404)
        with session.lock:  # the thumbnail cache is not thread-safe
            uri = session.thumbs(*held)
        if not uri:
            return Response("this image cannot be read", status_code=404)
        return Response(base64.b64decode(uri.split(",", 1)[1]), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    return Starlette(routes=[
        Route("/", page), Route("/api/queue", queue_json),
        Route("/api/answer", answer, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/image/{id}", image),
    ], middleware=[
        # The token first: a request without it learns nothing, not even a 404.
        Middleware(TokenGate, token=token),
        # A page from another site, by DNS rebinding, reaches 127.0.0.1 under its own
        # host name: refused.
        Middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"]),
    ])


def free_socket(port: int | None) -> socket.socket:
    """A listening socket on 127.0.0.1: ``port``, or a free one the system picks."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port or 0))
    except OSError as exc:
        sock.close()
        from backfill.config.errors import UserError

        raise UserError(f"port {port} on {HOST} is taken ({exc.strerror}): choose another "
                        "with --port, or leave it out for a free one.") from None
    sock.listen(64)
    return sock


def serve(project: Project, port: int | None = None, browser: bool = True,
          say: Callable[[str], None] = print) -> None:
    """Serve ``project``'s review until Ctrl-C: print the address (with its token) and
    open it in the browser when there is one."""
    import webbrowser

    session = Session.of(project)
    left = len(session.queue())
    token = secrets.token_urlsafe(24)
    sock = free_socket(port)
    url = f"http://{HOST}:{sock.getsockname()[1]}/?t={token}"
    say(f"{project.name}: {left} case(s) wait for you. Answers go to "
        f"{session.reviews.relative_to(project.root)} (commit it with your conf/).")
    say(f"review at {url}  (Ctrl-C to stop)")
    opened = False
    if browser:
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
    if browser and not opened:
        say("no browser found here: open the address above in one.")
    server = make_server(session, token)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: how you stop the app, not a failure
        pass
    finally:
        sock.close()
        session.thumbs.save()
    say(f"stopped: {len(session.queue())} case(s) still wait. `dvc repro` applies your "
        f"answers; commit {session.reviews.relative_to(project.root)}.")


def make_server(session: Session, token: str) -> uvicorn.Server:
    """The uvicorn server of ``session``'s app (run it on a socket from free_socket)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(create_app(session, token), log_level="warning"))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Review {{ project }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222}
.kinds span{margin-right:1.2rem}.renders{display:flex;gap:1rem;flex-wrap:wrap}
figure{margin:0;text-align:center}figure img{max-height:320px;border:3px solid #ddd}
figure.kept img{border-color:#2a2}
.unreadable{width:10rem;height:8rem;display:flex;align-items:center;justify-content:center;
background:#eee;color:#a00;border:3px dashed #caa}
figure.chosen img{outline:4px solid #36c;outline-offset:2px}
.reason{background:#fff6d6;padding:.5rem;margin:.8rem 0}
kbd{border:1px solid #aaa;border-radius:3px;padding:0 .3rem}#said{color:#a00}
</style></head><body>
<h1>Review {{ project }}: {{ left }} left</h1>
<p class="kinds">{% for k in kinds %}<span>{{ k.label }}: <b>{{ k.left }}</b></span>{% endfor %}</p>
{% if case %}
<h2 id="case" data-kind="{{ case.kind }}" data-subject="{{ case.subject }}">
{{ case.label }}: {{ case.subject }}</h2>
<p class="reason">{{ case.reason }}{% if case.confidence is not none %}
 (confidence {{ '%.3f' % case.confidence }}){% endif %}</p>
{% if case.earlier %}<p class="reason" id="earlier">Your answer ({{ case.earlier }}) could
not be applied to the files as they are now: `dvc repro` printed why. Answer again.</p>
{% endif %}
<div class="renders">
{% for r in case.renders %}
<figure class="render{{ ' kept' if r.kept }}{{ ' chosen' if r.index == case.chosen }}">
<img src="/image/{{ r.image }}?t={{ token }}"
 onerror="unreadable(this)" alt="render {{ r.index + 1 }}">
<figcaption><kbd>{{ r.index + 1 }}</kbd> {% if r.stage is not none %}stage {{ r.stage }}{% endif %}
{% if r.kept %}(kept; box as located){% endif %}</figcaption></figure>{% endfor %}
{% if case.final %}<figure><img src="/image/{{ case.final }}?t={{ token }}"
 onerror="unreadable(this)" alt="final">
<figcaption>{{ 'this final' if case.kind == 'orphan' else 'the kept final' }}</figcaption>
</figure>{% endif %}
</div>
{% if case.suggestions %}<h3>Which group is it from?</h3><div class="renders">
{% for g in case.suggestions %}<figure>
<img src="/image/{{ g.image }}?t={{ token }}"
 onerror="unreadable(this)" alt="group {{ g.group_id }}">
<figcaption><kbd>{{ g.index + 1 }}</kbd> {{ g.group_id }}</figcaption></figure>{% endfor %}
</div>{% endif %}
<p class="keys">{% if 'assign' in case.answers %}
<kbd>1</kbd>–<kbd>{{ case.suggestions|length }}</kbd>
it is from that group, <kbd>n</kbd> not from this project{% elif 'live' in case.answers %}
<kbd>l</kbd> the live database row is right (leave it as it is; to change it, correct it
in your reviewer){% elif 'approve' in case.answers %}
<kbd>1</kbd>–<kbd>{{ case.renders|length }}</kbd>
choose the image (now: <b id="chosen">{{ case.chosen + 1 }}</b>), <kbd>a</kbd> approve it
whole, <kbd>c</kbd> keep the crop as located, <kbd>r</kbd> reject (nothing kept){% else %}
<kbd>n</kbd> leave it out of every group{% endif %},
<kbd>s</kbd> skip, <kbd>u</kbd> undo your last answer.</p>
<p id="said"></p>
{% else %}<p>Nothing waits: every case is settled. Commit reviews/{{ project }}.jsonl.</p>
{% endif %}
<script>
const token = {{ token|tojson }}, here = {{ (case.id if case else '')|tojson }},
      after = {{ next|tojson }}, n = {{ (case.renders|length if case else 0)|tojson }},
      answers = {{ (case.answers if case else [])|tojson }},
      groups = {{ (case.suggestions|map(attribute='group_id')|list if case else [])|tojson }};
let chosen = {{ (case.chosen if case else 0)|tojson }};
function unreadable(img) {  // the server could not draw it: say so, not a broken icon
  const note = document.createElement('div');
  note.className = 'unreadable';
  note.textContent = 'cannot be read';
  img.replaceWith(note);
}
function go(id) { location.href = '/?t=' + encodeURIComponent(token) +
                  (id ? '&case=' + encodeURIComponent(id) : ''); }
async function post(path, body) {
  const r = await fetch(path + '?t=' + encodeURIComponent(token), {method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body || {})});
  const data = await r.json();
  if (!r.ok) { document.getElementById('said').textContent = data.error; return; }
  go(data.next);
}
function choose(i) {
  chosen = i;
  document.querySelectorAll('.renders figure.render').forEach(
    (f, j) => f.classList.toggle('chosen', j === i));
  document.getElementById('chosen').textContent = i + 1;
}
document.addEventListener('keydown', e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase(), answer = d => post('/api/answer', {case: here, decision: d});
  const number = k >= '1' && k <= '9' ? Number(k) : 0;
  if (k === 'u') return post('/api/undo');
  if (!here) return;
  if (k === 's') return go(after);
  if (answers.includes('assign')) {
    if (k === 'n') answer({action: 'foreign'});
    else if (number && number <= groups.length)
      answer({action: 'assign', group_id: groups[number - 1]});
  } else if (answers.includes('live')) {
    if (k === 'l') answer({action: 'live'});
  } else if (answers.includes('approve')) {
    if (number && number <= n) choose(number - 1);
    else if (k === 'a') answer({action: 'approve', index: chosen});
    else if (k === 'c') answer({action: 'crop', index: chosen});
    else if (k === 'r') answer({action: 'reject'});
  } else if (k === 'n') answer({action: 'foreign'});
});
</script></body></html>
"""

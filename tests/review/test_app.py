"""The review app: the token guards every request, answers are POSTs kept at once, and
images are reached only by the ids the server issued."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from backfill.config.project import reviews_file
from backfill.reports.report import Thumbnails
from backfill.review import store
from backfill.review.app import Session, case_id, create_app, free_socket
from backfill.review.queue import build_queue

TOKEN = "secret-token"


@pytest.fixture
def session(review_project, tmp_path) -> Session:
    gen, tables = review_project.gen, review_project.tables
    thumbs = Thumbnails(tmp_path / "cache", 10_000_000, {})
    return Session("p", tables, gen.original_dir, gen.final_dir,
                   reviews_file(tmp_path, "p"), thumbs)


@pytest.fixture
def client(session) -> TestClient:
    # The app answers to 127.0.0.1 only (not TestClient's default host).
    return TestClient(create_app(session, TOKEN), base_url="http://127.0.0.1")


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/api/queue"),
                                         ("POST", "/api/answer"), ("POST", "/api/undo"),
                                         ("GET", "/image/anything"), ("GET", "/nowhere")])
@pytest.mark.parametrize("query", ["", "?t=", "?t=wrong", f"?T={TOKEN}"])
def test_every_request_without_the_token_is_refused(client, session, method, path, query):
    reply = client.request(method, path + query, json={})
    assert reply.status_code == 403
    assert not session.reviews.exists()


def test_another_host_name_is_refused(session):
    rebinding = TestClient(create_app(session, TOKEN), base_url="http://evil.example")
    assert rebinding.get(f"/?t={TOKEN}").status_code == 400


def test_the_page_shows_the_first_case_and_counts(client, session):
    page = client.get(f"/?t={TOKEN}")
    assert page.status_code == 200
    first = session.queue()[0]
    assert first.reason in page.text.replace("&#39;", "'")
    assert f"{len(session.queue())} left" in page.text
    queue = client.get(f"/api/queue?t={TOKEN}").json()
    assert queue["left"] == len(session.queue()) == sum(k["left"] for k in queue["kinds"])


def test_images_are_served_by_issued_id_only(client, session, review_project):
    page = client.get(f"/?t={TOKEN}").text
    ids = re.findall(r"/image/([A-Za-z0-9_-]+)\?t=", page)
    assert ids and set(ids) <= set(session.images)
    served = client.get(f"/image/{ids[0]}?t={TOKEN}")
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.content[:2] == b"\xff\xd8"
    some_file = next(review_project.gen.original_dir.rglob("*.png"))
    for guess in (str(some_file), "..%2F..%2Fetc%2Fpasswd", some_file.name):
        assert client.get(f"/image/{guess}?t={TOKEN}").status_code == 404


def test_an_answer_is_kept_at_once_and_undone(client, session):
    before = session.queue()
    case = before[0]
    reply = client.post(f"/api/answer?t={TOKEN}",
                        json={"case": case_id(case), "decision": {"action": "approve", "index": 0}})
    assert reply.status_code == 200
    assert reply.json()["left"] == len(before) - 1
    assert reply.json()["next"] == case_id(before[1])
    [kept] = store.read(session.reviews)
    assert (kept.kind, kept.hashes, kept.settles, kept.decision) == \
        (case.kind, case.hashes, case.reason, {"action": "approve", "index": 0})
    again = client.post(f"/api/answer?t={TOKEN}",
                        json={"case": case_id(case), "decision": {"action": "reject"}})
    assert again.status_code == 404  # it waits no more
    back = client.post(f"/api/undo?t={TOKEN}").json()
    assert back["next"] == case_id(case) and back["left"] == len(before)
    assert store.read(session.reviews) == []


def test_a_bad_answer_writes_nothing(client, session):
    here = case_id(session.queue()[0])
    for body in ({"case": here, "decision": {"action": "maybe"}},
                 {"case": "not-a-case", "decision": {"action": "approve", "index": 0}}, [1]):
        assert client.post(f"/api/answer?t={TOKEN}", json=body).status_code in (400, 404)
    assert client.get(f"/api/answer?t={TOKEN}").status_code == 405  # changes are POSTs
    assert not session.reviews.exists()


def test_a_free_port_on_the_loopback_only():
    sock = free_socket(None)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
    finally:
        sock.close()


@pytest.mark.parametrize("browser,opens", [(True, True), (True, False), (False, None)])
def test_serve_prints_a_tokened_address_and_opens_the_browser(
        monkeypatch, session, tmp_path, browser, opens):
    import webbrowser
    from types import SimpleNamespace

    import uvicorn

    from backfill.review import app

    said, opened, served = [], [], []
    monkeypatch.setattr(app.Session, "of", classmethod(lambda cls, project: session))
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or opens)
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets: served.append(sockets[0].getsockname()))
    app.serve(SimpleNamespace(name="p", root=tmp_path), browser=browser, say=said.append)
    url = re.search(r"http://\S+", "\n".join(said)).group(0)
    host, port = served[0]
    assert url.startswith(f"http://127.0.0.1:{port}/?t=") and len(url.split("t=")[1]) >= 32
    assert opened == ([url] if browser else [])
    assert any("no browser" in line for line in said) == (opens is False)
    assert "reviews/p.jsonl" in said[0]


def test_the_command_is_a_thin_call(monkeypatch):
    from backfill import cli
    from backfill.review import app

    calls = []
    monkeypatch.setattr(cli, "load_project", lambda name, alone: f"project {name}")
    monkeypatch.setattr(app, "serve", lambda *a, **k: calls.append((a, k)))
    assert cli.main(["review", "p", "--no-browser", "--port", "8123"]) == 0
    assert calls[0][0] == ("project p", 8123) and calls[0][1]["browser"] is False
    assert cli.main(["review", "p", "--port", "0"]) == 2  # usage: a port is 1 or more


def test_a_real_server_on_the_loopback_refuses_requests_without_the_token(session):
    import threading
    import time
    import urllib.error
    import urllib.request

    from backfill.review.app import make_server

    sock = free_socket(None)
    server = make_server(session, TOKEN)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with urllib.request.urlopen(f"{base}/api/queue?t={TOKEN}", timeout=10) as reply:
            assert reply.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/queue", timeout=10)
        assert refused.value.code == 403
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_an_orphan_is_assigned_to_a_suggested_group_only(client, session):
    orphan = next(c for c in session.queue() if c.kind == "orphan")
    page = client.get(f"/?t={TOKEN}&case={case_id(orphan)}").text
    assert "Which group is it from?" in page and "not from this project" in page
    offered = re.findall(r'alt="group ([^"]+)"', page)
    assert offered
    here = {"case": case_id(orphan)}
    stranger = client.post(f"/api/answer?t={TOKEN}", json={
        **here, "decision": {"action": "assign", "group_id": "p_group_19990101_000000"}})
    assert stranger.status_code == 400 and not session.reviews.exists()
    taken = client.post(f"/api/answer?t={TOKEN}", json={
        **here, "decision": {"action": "assign", "group_id": offered[0]}})
    assert taken.status_code == 200
    [kept] = store.read(session.reviews)
    assert kept.subject == orphan.subject and kept.decision["group_id"] == offered[0]


def test_the_kept_render_is_drawn_with_its_box_at_the_reports_size(client, session):
    """The same (file, size, box) the report's review section draws: its cache serves it."""
    from backfill.review.app import case_view

    truth = session.tables["truth"].set_index("group_id")
    case = next(c for c in session.queue()
                if c.group_id and truth.loc[c.group_id, "crop_x1"] == truth.loc[
                    c.group_id, "crop_x1"])  # a located box
    view = case_view(session, case, [])
    kept = next(r for r in view["renders"] if r["kept"])
    path, px, box = session.images[kept["image"]]
    row = truth.loc[case.group_id]
    assert path == session.original_dir / row["original_path"] and px == 2 * session.px
    assert box == [row["crop_x1"], row["crop_y1"], row["crop_x2"], row["crop_y2"]]
    assert all(session.images[r["image"]][1:] == (session.px, None)
               for r in view["renders"] if not r["kept"])
    assert case_view(session, case, []) == view  # ids are issued once per thumbnail


def test_a_session_reads_a_projects_tables_and_says_what_is_missing(review_project, tmp_path):
    from omegaconf import OmegaConf

    from backfill.config.errors import UserError
    from backfill.config.project import Project
    from backfill.files.atomic import write_parquet

    gen = review_project.gen
    cfg = OmegaConf.merge(review_project.cfg, {"original_dir": str(gen.original_dir),
                                               "final_dir": str(gen.final_dir)})
    project = Project("p", tmp_path, cfg, tmp_path / "cache")
    with pytest.raises(UserError, match=r"no truth table yet: run `dvc repro extract@p`"):
        Session.of(project)
    for name, table in review_project.tables.items():
        if name != "merge_issues":  # before the merge: no conflicts yet
            write_parquet(table, project.output(name))
    session = Session.of(project)
    assert session.reviews == tmp_path / "reviews" / "p.jsonl"
    assert session.px == cfg.validate.thumbnail_px
    assert len(session.queue()) == len(build_queue(
        {k: v for k, v in review_project.tables.items() if k != "merge_issues"}))


def test_a_taken_port_is_said_in_one_line():
    from backfill.config.errors import UserError

    taken = free_socket(None)
    try:
        with pytest.raises(UserError, match="is taken.*--port"):
            free_socket(taken.getsockname()[1])
    finally:
        taken.close()


def test_ctrl_c_stops_the_app_with_a_line_and_keeps_the_thumbnails(monkeypatch, session,
                                                                    tmp_path):
    from types import SimpleNamespace

    import uvicorn

    from backfill.review import app

    said, saved = [], []

    def interrupted(self, sockets):
        raise KeyboardInterrupt

    monkeypatch.setattr(app.Session, "of", classmethod(lambda cls, project: session))
    monkeypatch.setattr(uvicorn.Server, "run", interrupted)
    monkeypatch.setattr(session.thumbs, "save", lambda: saved.append(True))
    app.serve(SimpleNamespace(name="p", root=tmp_path), browser=False, say=said.append)
    assert saved == [True]
    assert said[-1].startswith(f"stopped: {len(session.queue())} case(s) still wait")


def test_a_case_whose_answer_could_not_be_applied_waits_again_saying_so(session):
    case = next(c for c in session.queue() if c.kind == "needs_review")
    store.append(session.reviews, store.Answer(case.kind, case.subject, case.hashes,
                                               case.reason, {"action": "reject"},
                                               at="2026-12-04T10:00:00Z"))
    assert case not in session.queue()  # answered: settled until a repro rebuilds the tables
    session.built_at = "2026-12-04T11:00:00Z"  # a repro ran since, and the case is still there
    assert case in session.queue()
    client = TestClient(create_app(session, TOKEN), base_url="http://127.0.0.1")
    page = client.get(f"/?t={TOKEN}&case={case_id(case)}").text
    assert "could\nnot be applied" in page and "reject, at 2026-12-04T10:00:00Z" in page

"""The demo's web app: the page and its files, same-origin and Host checks, body limits,
400 with a message for bad input (never a traceback), and the event stream to two watchers."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

import httpx

with warnings.catch_warnings():  # Starlette's note that it prefers httpx2: not our concern here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from demohelp import TINY, wait_for

from cnnkit.demo import DemoSession
from cnnkit.demo.app import MAX_BODY, DemoServer, create_app
from cnnkit.train import CHECKPOINT, TrainConfig

ORIGIN = {"Origin": "http://testserver"}


def session(tmp_path, small, **kw) -> DemoSession:
    cfg = TrainConfig(model=TINY, epochs=500, schedule="constant", lr=0.01, optimizer="sgd", checkpoint_every=0)
    return DemoSession(cfg, tmp_path / "run", dataset=small, snapshot_seconds=0.1, **kw)


@pytest.fixture
def client(tmp_path, small):
    s = session(tmp_path, small)
    # the server answers a crash with a 500 (tested), not by raising into the test
    with TestClient(create_app(s, host="testserver"), base_url="http://testserver",
                    raise_server_exceptions=False) as c:
        c.session = s
        yield c
    assert (tmp_path / "run" / CHECKPOINT).exists()  # the app's shutdown stopped training and saved


def post(c, url, body=None, headers=ORIGIN, **kw):
    return c.post(url, content=json.dumps(body if body is not None else {}),
                  headers={"Content-Type": "application/json", **headers}, **kw)


def test_the_page_and_its_files_are_served_from_the_package_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert '<canvas id="activations"' in r.text and "/static/demo.js" in r.text
    assert "http" not in r.text.replace("http-equiv", "")  # nothing from a CDN: works offline
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "EventSource" in client.get("/static/demo.js").text
    assert client.get("/static/demo.css").headers["content-type"].startswith("text/css")
    # no route opens a path the client names
    for path in ("/static/../session.py", "/static/index.html", "/static/%2e%2e/app.py", "/api/../app.py",
                 "/etc/passwd"):
        assert client.get(path).status_code == 404, path


def test_state_says_what_trains(client):
    wait_for(lambda: client.get("/api/state").json()["points"], what="a first point")
    st = client.get("/api/state").json()
    assert st["run"]["spec"] == TINY and st["run"]["data"] == "digits"
    assert [layer["volume"] for layer in st["run"]["layers"]] == ["8x8x1", "8x8x4", "8x8x4", "4x4x4", "1x1x10"]
    assert len(st["grid"]["images"]) == 24 and st["status"]["state"] in ("training", "starting")


def test_posts_must_come_from_this_origin(client):
    assert post(client, "/api/pause", headers={}).status_code == 403
    r = post(client, "/api/pause", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin request refused" in r.json()["error"]
    r = post(client, "/api/pause", headers={"Origin": "http://testserver.evil.example"})
    assert r.status_code == 403
    r = post(client, "/api/pause", headers={"Referer": "http://evil.example/page"})
    assert r.status_code == 403
    assert client.session.paused is False  # none of them reached the session
    r = post(client, "/api/pause", headers={"Referer": "http://testserver/"})
    assert r.status_code == 200 and client.session.paused is True
    assert post(client, "/api/resume").json() == {"paused": False}
    assert client.get("/api/pause").status_code == 405  # state changes are POSTs only


def test_host_header_must_name_this_server(client):
    r = client.get("/api/state", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and "unexpected Host header" in r.json()["error"]


def test_body_size_type_and_json_are_checked(client):
    r = post(client, "/api/model", {"spec": "x" * MAX_BODY})
    assert r.status_code == 413 and f"at most {MAX_BODY} bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(40):
            yield b" " * 1024
    r = client.post("/api/lr", content=chunks(), headers={"Content-Type": "application/json", **ORIGIN})
    assert r.status_code == 413
    r = client.post("/api/lr", content="lr=0.1", headers={"Content-Type": "application/x-www-form-urlencoded",
                                                         **ORIGIN})
    assert r.status_code == 415
    r = client.post("/api/lr", content="{not json", headers={"Content-Type": "application/json", **ORIGIN})
    assert r.status_code == 400 and r.json()["error"].startswith("the body is not valid JSON")
    assert post(client, "/api/lr", [1, 2]).json()["error"] == "the body must be a JSON object, got list"
    assert post(client, "/api/lr", {}).json()["error"] == "missing field 'lr' in the JSON body"


@pytest.mark.parametrize("body, message", [
    ({"lr": -1}, "lr must be a number in (0, 10], got -1"),
    ({"lr": "0.1"}, "lr must be a number in (0, 10], got '0.1'"),
    ({"lr": 1e999}, "lr must be a number in (0, 10], got inf"),
    ({"lr": True}, "lr must be a number in (0, 10], got True"),
])
def test_bad_learning_rates_answer_400_with_a_message(client, body, message):
    r = post(client, "/api/lr", body)
    assert r.status_code == 400 and r.json() == {"error": message}


def test_bad_specs_and_indices_answer_400_and_the_run_goes_on(client):
    r = post(client, "/api/model", {"spec": "INPUT[8x8x1] -> CONV3-8/2p0 -> FC10"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "(8 - 3 + 0)/2 + 1 = 3.5 is not an integer" in err and err.endswith(
        "(at column 17)\n  INPUT[8x8x1] -> CONV3-8/2p0 -> FC10\n                  ^")
    assert "Traceback" not in err
    for spec, message in (("CONV3-8 -> ->", "at column"), ("INPUT[32x32x3] -> FC10", "does not match the data"),
                          ("[CONV3-1024]*4 -> FC10", "the demo trains at most 20,000,000"),
                          (12, "spec must be a string, got int"), ("", "the model is empty")):
        r = post(client, "/api/model", {"spec": spec})
        assert r.status_code == 400 and message in r.json()["error"], (spec, r.json())
    for index in (-1, 24, 2.5, "3"):
        r = post(client, "/api/select", {"index": index})
        assert r.status_code == 400 and "index must be an integer in [0, 23]" in r.json()["error"]
    assert client.session.run_id == 1 and client.session.status["state"] in ("training", "starting")
    assert post(client, "/api/select", {"index": 4}).json() == {"index": 4}


def test_a_crash_answers_500_without_a_traceback(client, monkeypatch):
    def broken(index):
        raise RuntimeError("secret internal detail")
    monkeypatch.setattr(client.session, "select", broken)
    r = post(client, "/api/select", {"index": 1})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; the server's log has the details"}


def read_events(stream, want: set[str], limit: int = 400) -> dict[str, list]:
    """Events from an open text/event-stream until every name in want was seen."""
    seen: dict[str, list] = {}
    name = None
    for line in stream.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            seen.setdefault(name, []).append(json.loads(line[6:]))
            if want <= set(seen):
                return seen
        limit -= 1
        if limit == 0:
            break
    pytest.fail(f"the stream ended without {want - set(seen)}")


def test_two_watchers_and_a_reload_all_get_the_whole_run_and_stopping_saves(tmp_path, small):
    s = session(tmp_path, small)
    server = DemoServer(s, "127.0.0.1", 0).start()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/"
        timeout = httpx.Timeout(60.0)
        with httpx.stream("GET", server.url + "api/events", timeout=timeout) as a, \
                httpx.stream("GET", server.url + "api/events", timeout=timeout) as b:
            assert a.headers["content-type"].startswith("text/event-stream")
            ea = read_events(a, {"reset", "points"})
            eb = read_events(b, {"reset", "points"})
            for e in (ea, eb):
                first = e["reset"][0]
                assert first["run"]["spec"] == TINY
                assert e["points"][0]["points"][0][0] > (first["points"][-1][0] if first["points"] else 0)
        wait_for(lambda: len(s.points) > 10, what="more steps")
        with httpx.stream("GET", server.url + "api/events", timeout=timeout) as again:  # a reload
            reset = read_events(again, {"reset"})["reset"][0]
            assert len(reset["points"]) >= 10 and reset["snapshot"] is not None
        r = httpx.post(server.url + "api/pause", json={}, headers={"Origin": server.url.rstrip("/")})
        assert r.status_code == 200
        r = httpx.post(server.url + "api/pause", json={}, headers={"Origin": f"http://localhost:{server.port}"})
        assert r.status_code == 403
    finally:
        server.stop()
    assert s.status["state"] == "stopped"
    assert (tmp_path / "run" / CHECKPOINT).exists()


def test_the_printed_url_accepts_connections_before_uvicorn_starts(tmp_path, small):
    """The CLI prints the URL before run(); a browser (or test) quick off the mark must wait, not be refused."""
    import socket

    server = DemoServer(session(tmp_path, small), "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
    finally:
        server.sock.close()


def test_cnnkit_demo_prints_the_url_and_ctrl_c_saves_a_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit.cli", "demo", "--model", TINY, "--port", "0",
                             "--out", str(out), "--epochs", "500"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"cnnkit demo: training {TINY} on digits; open http://127.0.0.1:"), line
        url = line.split("open ")[1].split()[0]
        wait_for(lambda: len(httpx.get(url + "api/state", timeout=30).json()["points"]) >= 3, what="3 steps")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"checkpoint saved to {out / CHECKPOINT}; continue with cnnkit demo --out {out} --resume" in err
    assert "Traceback" not in err
    from cnnkit.checkpoint import load_checkpoint
    assert load_checkpoint(out / CHECKPOINT).step >= 3


def test_cnnkit_demo_refuses_bad_settings_in_one_line(tmp_path, capsys):
    from cnnkit.cli import main

    assert main(["demo", "--port", "70000"]) == 1
    assert capsys.readouterr().err.strip() == "cnnkit demo: error: --port must be in 0..65535, got 70000"
    assert main(["demo", "--resume", "--model", TINY, "--out", str(tmp_path)]) == 1
    assert "drop --model (only --epochs may change)" in capsys.readouterr().err
    assert main(["demo", "--resume", "--out", str(tmp_path / "none")]) == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["demo", "--model", "INPUT[8x8x1] -> CONV3-8/2p0 -> FC10", "--out", str(tmp_path)]) == 1
    assert "3.5 is not an integer" in capsys.readouterr().err

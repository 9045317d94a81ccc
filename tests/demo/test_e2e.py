"""The demo in a real browser: headless Chromium driven by Playwright against a live server
training a tiny net on digits. The page loads, its curves get new points, the activations
and filters are drawn, pause holds the curves, a bad spec shows its error with the caret, a
cross-origin POST is refused, a reload and a second watcher see the run, and stopping the
server saves a checkpoint. The screenshot lands in the test's tmp_path (demo.png).

Needs `pip install playwright` and Debian's `chromium` (`playwright install` cannot
download browsers here); skips, saying which, only where one of them is missing.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
import time

import pytest
from demohelp import TINY

from cnnkit.train import CHECKPOINT, TrainConfig

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 60_000  # generous: a shared 2-core machine; every wait below ends as soon as it can

# the canvas's pixels: how many differ from the first one (blank = all white = 0)
INKED = """(id) => {
  const c = document.getElementById(id), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) n++;
  return n;
}"""
POINTS = "() => Number(document.getElementById('loss').dataset.points)"


def chromium() -> str:
    for path in (CHROMIUM, shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if path and os.access(path, os.X_OK):
            return path
    pytest.skip(f"no Chromium found (looked for {CHROMIUM} and chromium on PATH); apt-get install chromium")


def another_site(folder):
    """A plain web server on another port: a different origin, as a malicious site would be."""
    folder.mkdir()
    (folder / "index.html").write_text("<!doctype html><title>another site</title><p>hello")
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_the_live_page_in_headless_chromium(tmp_path, small):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    exe = chromium()
    from cnnkit.demo import DemoSession
    from cnnkit.demo.app import DemoServer

    cfg = TrainConfig(model=TINY, epochs=1000, schedule="constant", lr=0.02, optimizer="sgd", checkpoint_every=0)
    session = DemoSession(cfg, tmp_path / "run", dataset=small, snapshot_seconds=0.3)
    server = DemoServer(session, "127.0.0.1", 0).start()
    evil = another_site(tmp_path / "evil")
    evil_url = f"http://127.0.0.1:{evil.server_address[1]}/index.html"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, args=ARGS, headless=True, timeout=WAIT_MS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(WAIT_MS)
                page.goto(server.url)
                assert page.title() == "cnnkit demo: a ConvNet training live"
                page.wait_for_function("() => document.getElementById('spec').textContent.includes('CONV3-4')")

                # the curves get new points, again and again
                page.wait_for_function(f"() => ({POINTS})() > 0")
                n = page.evaluate(POINTS)
                page.wait_for_function(f"() => ({POINTS})() > {n + 5}")

                # the activations and the filters are drawn from the live net
                page.wait_for_function("() => window.cnnkitDemo.snapshot && "
                                       "document.getElementById('activations').dataset.step")
                assert page.evaluate(INKED, "activations") > 2000
                assert page.evaluate(INKED, "filters") > 20
                assert page.locator("#net .layer").count() == 5
                assert page.locator(".cell").count() == 24
                page.wait_for_function("() => document.querySelector('.cell .pred').textContent !== '…'")

                # pause holds the curves; resume lets them grow again
                page.click("#pause")
                page.wait_for_function("() => document.getElementById('status').textContent === 'paused'")
                held = page.evaluate(POINTS)
                time.sleep(2.0)
                assert page.evaluate(POINTS) == held and session.points[-1][1] == page.evaluate(
                    "() => window.cnnkitDemo.points.at(-1)[1]")
                assert page.locator("#pause").inner_text() == "Resume"
                page.click("#pause")
                page.wait_for_function(f"() => ({POINTS})() > {held}")

                # a second watcher, and a reload, see the same run from its start
                other = browser.new_page()
                other.set_default_timeout(WAIT_MS)
                other.goto(server.url)
                other.wait_for_function(f"() => ({POINTS})() > {held}")
                before = page.evaluate(POINTS)
                page.reload()
                page.wait_for_function(f"() => ({POINTS})() >= {before}")

                # a page of another origin (another port) cannot steer it
                other.goto(evil_url)
                with other.expect_response(lambda r: r.url.endswith("/api/pause")) as answer:
                    other.evaluate("(url) => fetch(url, {method: 'POST', mode: 'no-cors', body: '{}'})"
                                   ".catch(() => null)", f"http://127.0.0.1:{server.port}/api/pause")
                assert answer.value.status == 403
                assert session.paused is False

                # a bad spec shows the build's error with its caret, in the page
                page.fill("#newspec", "INPUT[8x8x1] -> CONV3-8/2p0 -> FC10")
                page.click("#train")
                error = page.locator("#spec-error")
                error.wait_for(state="visible")
                text = error.inner_text()
                assert "3.5 is not an integer" in text and text.rstrip().endswith("^")
                assert session.run_id == 1

                page.wait_for_timeout(500)  # one more refresh of the pictures before the screenshot
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            finally:
                browser.close()
    finally:
        evil.shutdown()
        server.stop()
    assert (tmp_path / "demo.png").stat().st_size > 20_000
    assert session.status["state"] == "stopped"
    assert (tmp_path / "run" / CHECKPOINT).exists()

"""Downloads from a loopback server: verified, atomic, cached, and refused when anything is off."""

import http.server
import threading

import numpy as np
import pytest
from datafakes import cifar_files, idx_files, md5, serve, tar_gz

from cnnkit.data import DataError, cache_dir, load
from cnnkit.data.download import base_url, fetch

CIFAR_TAR = tar_gz(cifar_files())
CIFAR_MD5 = {"cifar-10-python.tar.gz": md5(CIFAR_TAR)}
MNIST = idx_files()
MNIST_MD5 = {name: md5(data) for name, data in MNIST.items()}


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch):
    monkeypatch.delenv("CNNKIT_MIRROR", raising=False)
    monkeypatch.delenv("CNNKIT_CACHE", raising=False)


def test_cifar10_download_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path / "cache"))
    with serve({"/mirror/cifar-10-python.tar.gz": CIFAR_TAR}) as (url, requests):
        ds = load("cifar10", mirror=url + "/mirror", checksums=CIFAR_MD5)
    assert requests == ["/mirror/cifar-10-python.tar.gz"]
    cached = tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz"
    assert cached.read_bytes() == CIFAR_TAR
    assert ds.input_shape == (3, 32, 32) and len(ds.test) == 3
    # the server is gone: a second load reads the cache
    again = load("cifar10", checksums=CIFAR_MD5, mirror="http://127.0.0.1:9/gone")
    np.testing.assert_array_equal(again.train.X, ds.train.X)


def test_mnist_download_to_root_with_env_mirror(tmp_path, monkeypatch):
    with serve({f"/mnist/{name}": data for name, data in MNIST.items()}) as (url, requests):
        monkeypatch.setenv("CNNKIT_MIRROR", url)          # files are at $CNNKIT_MIRROR/<dataset>/
        ds = load("mnist", root=str(tmp_path / "m"), checksums=MNIST_MD5)
        assert sorted(requests) == sorted(f"/mnist/{name}" for name in MNIST)
        assert len(ds.train) + len(ds.val) == 6 and ds.classes[3] == "3"
        load("mnist", root=str(tmp_path / "m"), checksums=MNIST_MD5)
        assert len(requests) == 4                      # second load: cache only
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(MNIST)


def test_fashion_mnist_downloads_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path))
    with serve({f"/fashion-mnist/{n}": d for n, d in MNIST.items()}) as (url, _):
        monkeypatch.setenv("CNNKIT_MIRROR", url + "/")
        ds = load("fashion-mnist", checksums=MNIST_MD5)
    assert ds.classes[-1] == "Ankle boot"
    assert (tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_wrong_checksum_leaves_nothing(tmp_path):
    with serve({"/cifar-10-python.tar.gz": CIFAR_TAR}) as (url, _):
        with pytest.raises(DataError, match=r"corrupt: MD5 [0-9a-f]{32}, expected 0{32}"):
            load("cifar10", root=str(tmp_path), mirror=url,
                 checksums={"cifar-10-python.tar.gz": "0" * 32})
    assert list(tmp_path.iterdir()) == []


def test_published_checksums_are_the_default(tmp_path):
    # the tiny archive is not the real one, so the official MD5 refuses it
    with serve({"/cifar-10-python.tar.gz": CIFAR_TAR}) as (url, _):
        with pytest.raises(DataError, match="expected c58f30108f718f92721af3b95e74349a"):
            load("cifar10", root=str(tmp_path), mirror=url)
    assert list(tmp_path.iterdir()) == []


def test_http_404_leaves_nothing(tmp_path):
    with serve({}) as (url, requests):
        with pytest.raises(DataError, match="HTTP 404"):
            load("cifar10", root=str(tmp_path), mirror=url, checksums=CIFAR_MD5)
        assert requests == ["/cifar-10-python.tar.gz"]
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_keeps_verified_files_only(tmp_path):
    served = {f"/{n}": d for n, d in MNIST.items() if n != "t10k-labels-idx1-ubyte.gz"}
    with serve(served) as (url, _):
        with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz failed: HTTP 404"):
            load("mnist", root=str(tmp_path), mirror=url, checksums=MNIST_MD5)
    left = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert left == {n[1:]: d for n, d in served.items()}    # no .part file, nothing half-written


def test_truncated_body_is_refused(tmp_path):
    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        with pytest.raises(DataError, match="f.bin"):
            fetch(f"http://127.0.0.1:{server.server_address[1]}/f.bin", tmp_path / "f.bin", "0" * 32)
    finally:
        thread.join(timeout=5)
        server.server_close()
    assert list(tmp_path.iterdir()) == []


def test_no_download_when_disabled_or_refused(tmp_path):
    with pytest.raises(DataError, match="download=False"):
        load("mnist", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match="only http and https"):
        fetch("file:///etc/passwd", tmp_path / "p", "0" * 32)
    with pytest.raises(DataError, match="failed"):
        fetch("http://127.0.0.1:9/nothing", tmp_path / "n", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_goes_to_stderr(tmp_path, capfd):
    with serve({"/f.bin": b"abc" * 1000}) as (url, _):
        fetch(url + "/f.bin", tmp_path / "f.bin", md5(b"abc" * 1000))
    out, err = capfd.readouterr()
    assert "f.bin" in err and out == ""


def test_cache_and_mirror_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNKIT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("CNNKIT_CACHE")
    assert str(cache_dir()).endswith(".cache/cnnkit")
    assert base_url("mnist", "https://official/x") == "https://official/x/"
    monkeypatch.setenv("CNNKIT_MIRROR", "http://127.0.0.1:1/m/")
    assert base_url("mnist", "https://official/x") == "http://127.0.0.1:1/m/mnist/"
    assert base_url("mnist", "https://official/x", mirror="http://127.0.0.1:2") == "http://127.0.0.1:2/"


def _drip_server(step_bytes: int, every_s: float, total: int):
    """A loopback server that announces total bytes, then sends step_bytes every every_s seconds."""
    import time

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            try:
                for _ in range(total // step_bytes):
                    self.wfile.write(b"x" * step_bytes)
                    self.wfile.flush()
                    time.sleep(every_s)
            except OSError:   # the client gave up: what the test wants
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize("settings, message", [
    ({"GRACE_S": 0.3, "MIN_RATE": 10_000}, r"slow.bin stopped: \d+ bytes/s over 0\.\d s, below the minimum 10000 bytes/s"),
    ({"DEADLINE_S": 0.5, "MIN_RATE": 1}, r"slow.bin stopped: not finished after 0.5 s \(\d+ bytes received\)"),
])
def test_slow_drip_server_fails_in_bounded_time_and_leaves_no_part_file(tmp_path, monkeypatch, settings, message):
    """Every read returns within the per-read timeout (a byte arrives every 20 ms), so only the
    overall deadline and the minimum rate can stop it: 10 MB at 500 bytes/s would take 6 hours."""
    import time

    import cnnkit.data.download as download
    for name, value in settings.items():
        monkeypatch.setattr(download, name, value)
    server, thread = _drip_server(10, 0.02, 10_000_000)
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match=message):
            fetch(f"http://127.0.0.1:{server.server_address[1]}/slow.bin", tmp_path / "slow.bin", "0" * 32,
                  progress=False)
    finally:
        server.server_close()
    assert time.monotonic() - start < 2.0
    assert list(tmp_path.iterdir()) == []           # no slow.bin, no .slow.bin.*.part
    thread.join(timeout=5)


def test_headers_dripped_a_byte_at_a_time_fail_in_bounded_time(tmp_path, monkeypatch):
    """Each header byte arrives well within the per-read timeout; only the bound on the
    whole header phase stops it."""
    import socket
    import time

    import cnnkit.data.download as download
    monkeypatch.setattr(download, "HEADERS_S", 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def drip():
        conn, _ = listener.accept()
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Slow: " + b"y" * 1000:
                conn.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match=r"no complete response headers within 0.5 s"):
            fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/h.bin", tmp_path / "h.bin", "0" * 32,
                  progress=False)
    finally:
        listener.close()
    assert time.monotonic() - start < 2.0
    assert list(tmp_path.iterdir()) == []

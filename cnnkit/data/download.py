"""Fetch a data set's files once: verified by MD5, written atomically, cached on disk.

The cache is ``$CNNKIT_CACHE`` or ``~/.cache/cnnkit``, one folder per data set. The base
URL comes from, in order: the ``mirror`` argument, ``$CNNKIT_MIRROR/<dataset>/``, the
official URL.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from .dataset import DataError

CHUNK = 1 << 20
MAX_BYTES = 1 << 30     # no data set here is near 1 GiB; a server that keeps sending is refused
TIMEOUT_S = 60.0        # the longest one read may wait
DEADLINE_S = 3600.0     # the longest a whole download may take (CIFAR-10's 163 MB at 45 kB/s)
MIN_RATE = 10_000       # bytes/s on average, checked after GRACE_S
GRACE_S = 30.0
HEADERS_S = 60.0        # the longest the status line and headers may take, in all


def cache_dir() -> Path:
    """Root of the download cache: $CNNKIT_CACHE, else ~/.cache/cnnkit."""
    return Path(os.environ.get("CNNKIT_CACHE") or Path.home() / ".cache" / "cnnkit").expanduser()


def base_url(dataset: str, official: str, mirror: str | None = None) -> str:
    """The URL a data set's files are fetched from, ending in '/'."""
    if mirror is None and os.environ.get("CNNKIT_MIRROR"):
        mirror = os.environ["CNNKIT_MIRROR"].rstrip("/") + "/" + dataset
    url = mirror or official
    return url if url.endswith("/") else url + "/"


def ensure_files(folder: Path, checksums: Mapping[str, str], url: str, download: bool,
                 dataset: str) -> dict[str, Path]:
    """Paths of every file named in checksums inside folder, downloading the missing ones from url."""
    paths = {}
    for name, md5 in checksums.items():
        path = folder / name
        if not path.is_file():
            if not download:
                raise DataError(f"{dataset}: {path} not found and download=False; "
                                f"pass download=True or put the file there")
            fetch(url + name, path, md5)
        paths[name] = path
    return paths


def fetch(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Download url to dest if its MD5 is md5; on any failure nothing is left at dest."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"refusing to download {url}: only http and https URLs are fetched")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(url, out, dest.name, progress)
            out.flush()
            os.fsync(out.fileno())
        if digest != md5.lower():
            raise DataError(f"download of {url} is corrupt: MD5 {digest}, expected {md5}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def _stream(url: str, out, name: str, progress: bool) -> str:
    """Copy the body of url into out in chunks; returns its MD5 hex digest.

    Three bounds, so a stalled or slow-dripping server fails in bounded time: each read
    waits at most TIMEOUT_S; the whole download must end within DEADLINE_S; and after
    GRACE_S the average rate must stay at or above MIN_RATE bytes/s. Reads return what
    has arrived (read1), so the clock is checked however slowly bytes come."""
    digest = hashlib.md5()
    start = time.monotonic()
    try:
        with _open(url) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            if expected is not None and expected > MAX_BYTES:
                raise DataError(f"download of {url}: server announces {expected} bytes, over {MAX_BYTES}")
            bar = _progress_bar(name, expected, progress)
            received = 0
            try:
                while received <= MAX_BYTES:
                    chunk = response.read1(CHUNK)
                    if not chunk:
                        break
                    received += len(chunk)
                    digest.update(chunk)
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    _check_pace(url, received, time.monotonic() - start)
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as e:
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DataError(f"download of {url} failed: {getattr(e, 'reason', e)}") from None
    if received > MAX_BYTES:
        raise DataError(f"download of {url}: more than {MAX_BYTES} bytes, refused")
    if expected is not None and received != expected:
        raise DataError(f"download of {url} truncated: {received} of {expected} bytes")
    return digest.hexdigest()


def _open(url: str) -> Any:
    """urlopen(url), with the status line and headers bounded in ALL by HEADERS_S: a server
    may drip them a byte per read, each read within TIMEOUT_S, for ever. The request runs
    in a helper thread; when it takes too long the download fails here and the helper,
    whenever its request ends, closes what it got."""
    box: dict[str, Any] = {}
    gave_up = threading.Event()

    def request() -> None:
        try:
            box["response"] = urllib.request.urlopen(url, timeout=TIMEOUT_S)
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        if gave_up.is_set() and "response" in box:
            box["response"].close()

    helper = threading.Thread(target=request, name="cnnkit-download", daemon=True)
    helper.start()
    helper.join(HEADERS_S)
    if helper.is_alive():
        gave_up.set()
        raise DataError(f"download of {url} stopped: no complete response headers within {HEADERS_S:g} s; "
                        "try again or use a mirror (CNNKIT_MIRROR)")
    if "error" in box:
        raise box["error"]
    return box["response"]


def _check_pace(url: str, received: int, elapsed: float) -> None:
    """DataError when the download has run past DEADLINE_S or, after GRACE_S, below MIN_RATE."""
    if elapsed > DEADLINE_S:
        raise DataError(f"download of {url} stopped: not finished after {DEADLINE_S:g} s "
                        f"({received} bytes received); try again or use a mirror (CNNKIT_MIRROR)")
    if elapsed > GRACE_S and received < MIN_RATE * elapsed:
        raise DataError(f"download of {url} stopped: {received / elapsed:.0f} bytes/s over {elapsed:.1f} s, "
                        f"below the minimum {MIN_RATE} bytes/s; try again or use a mirror (CNNKIT_MIRROR)")


def _progress_bar(name: str, total: int | None, enabled: bool):
    """A tqdm bar on stderr, or None when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some platforms cannot open a directory, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""engine(keep_freed_memory=...): glibc's malloc keeps freed memory for the next arrays
(a training step makes the same big arrays again every step) or maps fresh pages for each."""

import ctypes
import pathlib
import platform
import subprocess
import sys

import pytest

import cnnkit as ck
from cnnkit.layers.runtime import keep_freed_memory

glibc = platform.libc_ver()[0] == "glibc"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mapped_bytes() -> int:
    """Bytes glibc holds in blocks of their own mapping (mallinfo2's hblkhd)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    return mallinfo2().hblkhd


@pytest.mark.skipif(not glibc or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
@pytest.mark.parametrize("keep", [True, False])
def test_a_big_array_comes_from_the_heap_while_freed_memory_is_kept(keep):
    """In a fresh process (a heap with free memory in it would serve the array either way):
    an 8 MB array, a 64x32x32x32 float32 batch, has no mapping of its own by default, and
    one under glibc's defaults (128 KB and up are mapped)."""
    script = f"""
import ctypes, numpy as np, cnnkit as ck
from tests.layers.test_memory_reuse import mapped_bytes
with ck.engine(keep_freed_memory={keep}):
    before = mapped_bytes()
    a = np.ones(2 << 20, np.float32)
    print(mapped_bytes() - before)
"""
    root = pathlib.Path(__file__).parents[2]
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120)
    assert run.returncode == 0, run.stderr
    mapped = int(run.stdout.split()[-1])
    assert (mapped < 8 << 20) if keep else (mapped >= 8 << 20)


def test_keep_freed_memory_says_where_it_took_and_checks_its_option():
    assert keep_freed_memory(True) is glibc
    with pytest.raises(ck.CnnkitError, match="keep_freed_memory must be True or False"):
        with ck.engine(keep_freed_memory="yes"):
            pass

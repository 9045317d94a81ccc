"""CIFAR-10: the python batches load from a folder or the tar.gz; hostile pickles run nothing."""

import contextlib
import os
import pickle

import numpy as np
import pytest
from datafakes import CIFAR_NAMES, cifar_files, py2_pickle, tar_gz, write

from cnnkit.data import DataError, load
from cnnkit.data.cifar import read_batch, safe_unpickle


class Evil:
    """Unpickling this with the standard pickle runs a shell command that creates marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('false')",))


def test_fixture_is_what_numpy_and_pickle_read():
    # the fake batches are real pickles: the unrestricted reader agrees with ours
    data = cifar_files()["data_batch_1"]
    plain = pickle.loads(data, encoding="bytes")
    safe = safe_unpickle(data, "data_batch_1")
    assert safe.keys() == plain.keys()
    np.testing.assert_array_equal(safe[b"data"], plain[b"data"])
    assert safe[b"data"].dtype == np.uint8 and safe[b"data"].shape == (2, 3072)
    assert safe[b"labels"] == plain[b"labels"]


def test_load_from_folder(tmp_path):
    files = cifar_files(per_batch=4, n_test=3)
    write(tmp_path / "cifar-10-batches-py", files)
    ds = load(f"cifar10:{tmp_path}", val_fraction=0.25)   # the parent folder is accepted too
    assert ds.name == "cifar10" and ds.classes == CIFAR_NAMES and ds.input_shape == (3, 32, 32)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 3)
    raw = pickle.loads(files["data_batch_5"], encoding="bytes")
    # val is the last 5 of 20: one image of batch 4, then all of batch 5
    np.testing.assert_array_equal(ds.val.X[-4:], raw[b"data"].reshape(4, 3, 32, 32) / np.float32(255))
    np.testing.assert_array_equal(ds.val.y[-4:], raw[b"labels"])
    test = pickle.loads(files["test_batch"], encoding="bytes")
    assert ds.test.X.dtype == np.float32 and ds.test.y.dtype == np.int64
    assert ds.test.X[1, 2, 3, 4] == test[b"data"][1, 2 * 1024 + 3 * 32 + 4] / np.float32(255)
    assert 0.0 <= ds.train.X.min() and ds.train.X.max() <= 1.0


def test_default_val_is_last_tenth(tmp_path):
    folder = write(tmp_path / "b", cifar_files(per_batch=10))
    ds = load(f"cifar10:{folder}")
    assert (len(ds.train), len(ds.val)) == (45, 5)     # 50,000 -> 45,000 + last 5,000


def test_folder_and_tar_gz_agree(tmp_path):
    files = cifar_files()
    folder = write(tmp_path / "cifar-10-batches-py", files)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(tar_gz(files))
    a, b = load(f"cifar10:{folder}"), load(f"cifar10:{archive}")
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, s).X, getattr(b, s).X)
        np.testing.assert_array_equal(getattr(a, s).y, getattr(b, s).y)


@pytest.mark.parametrize("protocol", [2, 3])
def test_plain_bytes_data_is_accepted(protocol):
    # Python 3 writes bytes with _codecs.encode in protocol 2: a stand-in spells them, nothing more
    batch = pickle.dumps({b"data": bytes(range(256)) * 12, b"labels": [3]}, protocol=protocol)
    X, y = read_batch(batch, "b")
    assert X.shape == (1, 3, 32, 32) and X[0, 0, 0, 5] == 5 and y.tolist() == [3]
    with pytest.raises(DataError, match="_codecs.encode"):
        safe_unpickle(b"c_codecs\nencode\n(Vx\nVutf-8\ntR.", "b")


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickle_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    hostile = pickle.dumps({"data": Evil(marker), "labels": [0]}, protocol=protocol)
    with pytest.raises(DataError, match="posix.system|os.system"):
        safe_unpickle(hostile, "data_batch_1")
    assert not marker.exists()
    # the same pickle really is hostile: the standard unpickler runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(control), protocol=protocol))
    assert control.exists()


def test_hostile_batch_in_data_set_raises_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"
    files = cifar_files()
    files["data_batch_3"] = pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2)
    folder = write(tmp_path / "c", files)
    with pytest.raises(DataError, match="data_batch_3"):
        load(f"cifar10:{folder}")
    assert not marker.exists()
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(tar_gz(files))
    with pytest.raises(DataError, match="data_batch_3"):
        load(f"cifar10:{archive}")
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    EvalEvil(),
    b"cbuiltins\nexec\n(Vprint(1)\ntR.",
    b"cnumpy\nload\n(Vx\ntR.",                       # a numpy name beyond the three allowed
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncbuiltins\nobject\nK\x00\x85U\x01b\x87R.",
])
def test_only_plain_data_globals(payload):
    data = payload if isinstance(payload, bytes) else pickle.dumps(payload)
    with pytest.raises(DataError):
        safe_unpickle(data, "x")


def test_build_on_a_stand_in_cannot_change_the_module():
    import cnnkit.data.cifar as cifar
    # GLOBAL numpy.ndarray / numpy.dtype, then BUILD with slot state {'x': 1}: setattr on the global
    for name in (b"numpy\nndarray", b"numpy\ndtype", b"numpy.core.multiarray\n_reconstruct"):
        with contextlib.suppress(DataError):       # refused or applied to a throwaway copy
            safe_unpickle(b"\x80\x02c" + name + b"\nN}X\x01\x00\x00\x00xK\x01s\x86b.", "x")
    assert not any(hasattr(c, "x") for c in (cifar._NdarrayTag, cifar._Dtype, cifar._Array))
    X, _ = read_batch(cifar_files()["data_batch_1"], "b")
    assert X.shape == (2, 3, 32, 32)


def test_float_arrays_and_lying_sizes_are_refused():
    with pytest.raises(DataError, match="not plain integers"):
        safe_unpickle(pickle.dumps({b"x": np.zeros(3)}, protocol=3), "x")
    short = py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2, 3]})
    with pytest.raises(DataError, match=r"\(3, 3072\)"):
        read_batch(short, "data_batch_1")
    with pytest.raises(DataError, match="0..9"):
        read_batch(py2_pickle({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}), "b")


def test_garbage_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="not a readable pickle"):
        safe_unpickle(b"\x80\x02}q\x01(U", "data_batch_2")
    files = cifar_files()
    del files["test_batch"]
    folder = write(tmp_path / "c", files)
    with pytest.raises(DataError, match="test_batch"):
        load(f"cifar10:{folder}")
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(tar_gz(files))
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/test_batch"):
        load(f"cifar10:{archive}")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="bad.tar.gz"):
        load(f"cifar10:{bad}")

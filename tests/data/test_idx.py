"""MNIST and Fashion-MNIST from IDX files; corrupt files name themselves and what was expected."""

import gzip
import struct

import numpy as np
import pytest
from datafakes import idx_bytes, idx_files, write

from cnnkit.data import DataError, load
from cnnkit.data.idx import IMAGES_MAGIC, read_idx


def test_load_mnist_from_folder(tmp_path):
    files = idx_files(n_train=10, n_test=4)
    folder = write(tmp_path / "m", files)
    ds = load(f"mnist:{folder}", val_fraction=0.2)
    assert ds.name == "mnist" and ds.classes == [str(d) for d in range(10)]
    assert ds.input_shape == (1, 28, 28)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
    images = np.frombuffer(gzip.decompress(files["train-images-idx3-ubyte.gz"])[16:], np.uint8)
    labels = np.frombuffer(gzip.decompress(files["train-labels-idx1-ubyte.gz"])[8:], np.uint8)
    np.testing.assert_array_equal(ds.val.X.reshape(2, -1), images.reshape(10, -1)[8:] / np.float32(255))
    np.testing.assert_array_equal(np.concatenate([ds.train.y, ds.val.y]), labels)
    assert ds.train.X.dtype == np.float32 and ds.train.y.dtype == np.int64


def test_fashion_mnist_has_its_class_names_and_unpacked_files_work(tmp_path):
    folder = write(tmp_path / "f", {k.removesuffix(".gz"): gzip.decompress(v)
                                    for k, v in idx_files().items()})
    ds = load(f"fashion-mnist:{folder}")
    assert ds.name == "fashion-mnist" and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert len(ds.train) + len(ds.val) == 6 and len(ds.test) == 4


def test_wrong_magic_names_file_and_expectation(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros(5)))            # a labels file where images belong
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: IDX magic number 0x00000803 "
                                        r"expected, found 0x00000801"):
        read_idx(path, IMAGES_MAGIC)


@pytest.mark.parametrize("cut", [1, 100])
def test_truncated_file_names_expected_size(tmp_path, cut):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28)))[:-cut]))
    with pytest.raises(DataError, match=rf"t10k-images-idx3-ubyte.gz: 1584 bytes expected for "
                                        rf"shape \(2, 28, 28\), file has {1584 - cut}"):
        read_idx(path, IMAGES_MAGIC)


def test_short_header_and_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(struct.pack(">I", IMAGES_MAGIC) + b"\0\0"))
    with pytest.raises(DataError, match="x.gz: IDX header of 16 bytes expected, file has 6"):
        read_idx(path, IMAGES_MAGIC)
    path.write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match="x.gz: cannot read"):
        read_idx(path, IMAGES_MAGIC)


def test_mismatched_counts_sizes_and_labels(tmp_path):
    files = idx_files()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros(3)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: 4 labels expected"):
        load(f"mnist:{write(tmp_path / 'a', files)}")
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.full(4, 11)))
    with pytest.raises(DataError, match="labels 0..9 expected, found 11"):
        load(f"mnist:{write(tmp_path / 'b', files)}")
    files["t10k-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros((4, 8, 8))))
    with pytest.raises(DataError, match=r"images of 28x28 expected, found \(8, 8\)"):
        load(f"mnist:{write(tmp_path / 'c', files)}")


def test_missing_file_in_path_is_not_downloaded(tmp_path):
    files = idx_files()
    del files["train-labels-idx1-ubyte.gz"]
    with pytest.raises(DataError, match="missing .*train-labels-idx1-ubyte.gz"):
        load(f"mnist:{write(tmp_path / 'm', files)}")

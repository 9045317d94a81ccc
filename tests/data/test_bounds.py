"""Resources are bounded before they are spent: IDX headers, tar members, pickles and images
that claim (or expand to) more than their format allows are refused, fast, naming the file."""

import gzip
import io
import pickle
import struct
import tarfile
import time
import zlib

import numpy as np
import pytest
from datafakes import cifar_files, idx_bytes, py2_pickle, tar_gz, write

import cnnkit.data.cifar as cifar
from cnnkit.data import DataError, load, open_image
from cnnkit.data.cifar import read_batch, safe_unpickle
from cnnkit.data.folder import read_images
from cnnkit.data.idx import IMAGES_MAGIC, read_idx
from cnnkit.data.restricted import walk

# --- IDX: the header fixes the size ----------------------------------------------------


@pytest.mark.parametrize("dims, figure", [
    ((60000, 28, 28 * 1000), "47.0 GB"),
    ((2**32 - 1,) * 3, "79228162435..."),   # the product overflows int64: still refused, with the figure
])
def test_huge_idx_dimensions_are_refused_before_reading(tmp_path, dims, figure):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">I", IMAGES_MAGIC) + struct.pack(">3I", *dims)))
    with pytest.raises(DataError, match=rf"IDX header declares shape \({dims[0]}, .*refused") as info:
        read_idx(path, IMAGES_MAGIC)
    if figure.endswith("..."):
        size = 16 + (2**32 - 1) ** 3
        assert size > 2**63 and f"{size / 1e9:.1f} GB" in str(info.value)
    else:
        assert figure in str(info.value)


def test_idx_reads_no_more_than_its_header_declares(tmp_path):
    """A gzip that keeps expanding past the declared size is refused after size + 1 bytes."""
    declared = idx_bytes(np.zeros((2, 28, 28)))
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)   # gzip framing
    body = bomb.compress(declared) + b"".join(bomb.compress(bytes(1 << 20)) for _ in range(64)) + bomb.flush()
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(body)                          # 64 MB of zeros after the images, 64 kB on disk
    assert len(body) < 100_000
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"holds more than the 1584 bytes its header declares"):
        read_idx(path, IMAGES_MAGIC)
    assert time.perf_counter() - start < 0.5        # it stopped reading: 64 MB would take longer


def test_idx_max_bytes_is_a_parameter(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28))))
    assert read_idx(path, IMAGES_MAGIC).shape == (2, 28, 28)
    with pytest.raises(DataError, match=r"shape \(2, 28, 28\), 1.6 kB; more than the 1.0 kB"):
        read_idx(path, IMAGES_MAGIC, max_bytes=1000)


# --- CIFAR-10: members are read up to the format's size ---------------------------------


def test_tar_member_declaring_more_than_a_batch_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(tar_gz(cifar_files()))
    assert load(f"cifar10:{path}").input_shape == (3, 32, 32)
    size = len(cifar_files()["data_batch_1"])
    monkeypatch.setattr(cifar, "BATCH_BYTES", size - 1)   # as if the member were bigger than 32 MB
    with pytest.raises(DataError, match=rf"data_batch_1: declares {size / 1000:.1f} kB, more than the "
                                        rf"{(size - 1) / 1000:.1f} kB this file can be; refused"):
        load(f"cifar10:{path}")
    folder = write(tmp_path / "cifar-10-batches-py", cifar_files())
    with pytest.raises(DataError, match=r"data_batch_1: .*more than the .* this file can be; refused"):
        load(f"cifar10:{folder}")


def test_tar_stream_is_bounded_before_skipping_a_huge_member(tmp_path, monkeypatch):
    """A member (not one CIFAR reads) that claims far more than the archive holds is not skipped."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/padding")
        info.size = 1 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
        for name, data in cifar_files().items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "c.tar.gz"
    path.write_bytes(buf.getvalue())
    monkeypatch.setattr(cifar, "ARCHIVE_BYTES", 1 << 19)
    with pytest.raises(DataError, match=r"member cifar-10-batches-py/padding ends past 524.3 kB of archive"):
        load(f"cifar10:{path}")


# --- the unpickler's walk: memo and a cap -------------------------------------------------


def _shared_lists(depth: int) -> list:
    """depth lists, each holding the previous one twice: 2**depth leaves if copied."""
    inner: list = []
    for _ in range(depth):
        inner = [inner, inner]
    return inner


def test_nested_shared_lists_fail_in_milliseconds():
    bomb = pickle.dumps({b"filenames": _shared_lists(40)}, protocol=2)
    assert len(bomb) < 500
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"data_batch_1: nests shared objects far beyond its own size"):
        safe_unpickle(bomb, "data_batch_1")
    assert time.perf_counter() - start < 0.05


def test_the_bomb_inside_a_real_batch_is_refused_too():
    batch = {"batch_label": "b", "labels": [3], "data": np.zeros((1, 3072), np.uint8), "filenames": ["f"]}
    good = py2_pickle(batch)
    X, y = read_batch(good, "b")
    assert X.shape == (1, 3, 32, 32) and y.tolist() == [3]
    # the same dict with b'filenames' replaced by 2**40 references (each level: BINGET, BINGET;
    # POP leaves only the last list on the stack)
    levels = b"]q\x000" + b"".join(b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])
                                    + (b"0" if i < 40 else b"") for i in range(1, 41))
    hostile = good.replace(b"U\x09filenames](U\x01fe", b"U\x09filenames" + levels)
    assert hostile != good
    with pytest.raises(DataError, match="nests shared objects far beyond"):
        read_batch(hostile, "b")


def test_shared_objects_stay_shared_and_cost_once():
    inner = [1, 2, 3]
    out = safe_unpickle(pickle.dumps({b"a": inner, b"b": inner, b"c": (inner, inner)}, protocol=2), "x")
    assert out == {b"a": [1, 2, 3], b"b": [1, 2, 3], b"c": ([1, 2, 3], [1, 2, 3])}
    assert out[b"a"] is out[b"b"] is out[b"c"][0]


def test_cycles_and_deep_nesting_are_refused():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(DataError, match="x: a container in it contains itself"):
        safe_unpickle(pickle.dumps(cycle, protocol=2), "x")
    deep = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."   # lists nested 100,000 deep, 200 kB
    with pytest.raises(DataError, match="x: nests containers more than 100 deep"):
        safe_unpickle(deep, "x")


def test_walk_counts_expanded_size_exactly():
    shared = [0, 0]
    tree = [shared, shared]         # 1 + 2 * (1 + 2) = 7 objects if copied
    assert walk(tree, lambda v: v, 7, DataError) == [[0, 0], [0, 0]]
    with pytest.raises(DataError, match="over 6 objects"):
        walk(tree, lambda v: v, 6, DataError)


# --- images: size from the header, before decoding ------------------------------------------


def _png(path, width, height):
    """A real 1x1 PNG whose IHDR then claims width x height (CRC fixed, so Pillow opens it)."""
    from PIL import Image
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def test_huge_image_is_refused_from_its_header(tmp_path):
    pytest.importorskip("PIL")
    path = _png(tmp_path / "big.png", 10_000, 10_000)   # 100 MB of pixels in 70 bytes
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"big.png: 10000x10000 pixels, more than the 67,108,864 .*before decoding"):
        open_image(path)
    assert time.perf_counter() - start < 0.5
    # past twice Pillow's own limit it raises DecompressionBombError while opening: still one DataError
    path = _png(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(DataError, match=r"huge.png: refused by Pillow as a decompression bomb"):
        open_image(path, max_pixels=10**12)


def test_folder_dataset_checks_every_header_first(tmp_path):
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    assert load(f"folder:{tmp_path}").input_shape == (3, 4, 4)
    paths = sorted(tmp_path.glob("*/*.png"))
    with pytest.raises(DataError, match=r"4 images of 4x4 make 768 bytes as float32, more than the 700 bytes"):
        read_images(paths, max_bytes=700)
    _png(tmp_path / "b" / "2.png", 20_000, 5_000)
    with pytest.raises(DataError, match=r"2.png: 20000x5000 pixels, more than"):
        load(f"folder:{tmp_path}")
    (tmp_path / "b" / "2.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"2.png: not a readable image"):
        load(f"folder:{tmp_path}")

"""Checkpoints sized or shaped wrong by their file: refused before memory is spent, in one
line naming the file and the field; stale temporary files cleaned; a full disk is one line."""

import json
import os
import time
import tracemalloc

import numpy as np
import pytest

import cnnkit
from cnnkit import checkpoint as ckpt_mod
from cnnkit.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.files import atomic_file, remove_stale_temps
from cnnkit.optim import SGD

SPEC = "INPUT[6x6x1] -> CONV3-4 -> RELU -> FC10"


def trained_like(path):
    """A checkpoint with the metadata cnnkit train writes."""
    cnnkit.manual_seed(0)
    net = cnnkit.build(SPEC)
    extra = {"config": {"model": SPEC}, "batch": 3, "running": {"loss": 1.5, "correct": 2, "seen": 8},
             "input_shape": [1, 6, 6], "classes": [str(d) for d in range(10)], "data": "digits",
             "layer_rngs": {}}
    save_checkpoint(path, net, SGD(net, lr=0.1), epoch=2, step=7, rng=np.random.default_rng(1), extra=extra)
    return net


def rewrite(path, **changes):
    """Replace metadata fields of a checkpoint ('extra.x' for a field of extra; None deletes)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = {k: json.loads(v) for k, v in json.loads(f.read(n))["__metadata__"].items()}
    for key, value in changes.items():
        target, _, field = ("extra", None, key[6:]) if key.startswith("extra_") else (None, None, key)
        where = meta["extra"] if target else meta
        if value is None:
            where.pop(field, None)
        else:
            where[field] = value
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def test_a_good_training_checkpoint_loads(tmp_path):
    path = tmp_path / "c.safetensors"
    net = trained_like(path)
    ck = load_checkpoint(path)
    assert ck.epoch == 2 and ck.meta["extra"]["batch"] == 3
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(ck.net.state_dict()[k], v)


def test_architecture_of_200_million_filters_is_refused_with_the_figure(tmp_path):
    path = tmp_path / "c.safetensors"
    trained_like(path)
    arch = load_checkpoint(path).meta["architecture"]
    arch["layers"][0]["out_channels"] = 200_000_000
    rewrite(path, architecture=arch)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, max_bytes=1 << 30)
    elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 200,000,000 x (1 x 3 x 3 weights + 1 bias) + the FC as stored (144 inputs x 10 + 10)
    count = 200_000_000 * 10 + 144 * 10 + 10
    assert f"{count:,} parameters" in str(info.value) and str(path) in str(info.value)
    assert "more than the 1.1 GB limit" in str(info.value)
    assert elapsed < 1.0 and peak < 50 << 20        # nothing of that size was allocated
    # under a limit that allows it, the file's own tensors refuse it, naming the figure
    with pytest.raises(CheckpointError, match=r"needs 0.weight of shape \(200000000, 1, 3, 3\) "
                                              r"\(1,800,000,000 values\), the file holds \(4, 1, 3, 3\)"):
        load_checkpoint(path, max_bytes=1 << 50)


def test_default_limit_is_build_s_limit_half_of_physical_memory(monkeypatch):
    monkeypatch.delenv("CNNKIT_MAX_MEMORY", raising=False)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert ckpt_mod.memory_limit() == int(0.5 * total)
    monkeypatch.setenv("CNNKIT_MAX_MEMORY", "3GB")        # one limit for build and for loading
    assert ckpt_mod.memory_limit() == 3 << 30


@pytest.mark.parametrize("changes, message", [
    ({"extra_classes": ["a", "b", "c"]}, r"'extra.classes' must be a list of 10 names, one per score"),
    ({"extra_batch": None}, r"'extra.batch' is missing"),
    ({"extra_batch": "3"}, r"'extra.batch' must be an integer >= 0, got '3'"),
    ({"extra_input_shape": "1x6x6"}, r"'extra.input_shape' must be a list \[C, H, W\] of positive integers"),
    ({"extra_input_shape": [1, 6]}, r"'extra.input_shape' must be a list \[C, H, W\]"),
    ({"extra_input_shape": [1, 5, 5]}, r"'extra.input_shape' \[1, 5, 5\] does not fit the stored architecture"),
    ({"epoch": "2"}, r"'epoch' must be an integer >= 0, got '2'"),
    ({"step": 1.5}, r"'step' must be an integer >= 0, got 1.5"),
    ({"rng": {"bit_generator": "PCG64", "state": "garbage"}}, r"'rng' is not a random generator state"),
    ({"rng": {"bit_generator": "os.system"}}, r"'rng' is not a random generator state"),
    ({"extra_running": {"loss": "low"}}, r"'extra.running' must be \{'loss': number"),
    ({"extra_layer_rngs": {"0": 5}}, r"'extra.layer_rngs.0' is not a random generator state"),
    ({"normalization": {"mean": [0.5], "std": "x"}}, r"'normalization' must be"),
    ({"optimizer": ["sgd"]}, r"'optimizer' must be a dict with a 'type'"),
    ({"schedule": {"type": "Nope"}}, r"'schedule' is not a schedule"),
    ({"extra": [1, 2]}, r"'extra' must be a dict"),
])
def test_wrong_metadata_is_one_line_naming_file_and_field(tmp_path, changes, message):
    path = tmp_path / "c.safetensors"
    trained_like(path)
    rewrite(path, **changes)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text and isinstance(info.value, CnnkitError)


def test_restore_rng_refuses_a_bad_state_in_one_line():
    with pytest.raises(CheckpointError, match=r"restore_rng: the MT19937 state does not fit"):
        ckpt_mod.restore_rng({"bit_generator": "MT19937", "state": {"key": "x", "pos": 1}})


def test_stale_temporary_files_are_removed(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    trained_like(path)
    good = path.read_bytes()
    # what a save killed mid-write leaves: atomic_file's own temporary name beside the target
    stale = [tmp_path / ".checkpoint.safetensors.abc123.tmp", tmp_path / ".checkpoint.safetensors.x_y.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = [tmp_path / ".other.safetensors.abc.tmp", tmp_path / "checkpoint.safetensors.tmp", tmp_path / "notes.txt"]
    for p in keep:
        p.write_bytes(b"not ours")
    removed = remove_stale_temps(path)
    assert sorted(removed) == sorted(str(p) for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.safetensors", *(p.name for p in keep)])
    assert path.read_bytes() == good and remove_stale_temps(path) == []


def test_the_pattern_matches_what_atomic_file_writes(tmp_path):
    path = tmp_path / "c.safetensors"
    with pytest.raises(FileNotFoundError):   # the write in progress loses its temporary file
        with atomic_file(path) as f:
            f.write(b"x")
            (temp,) = list(tmp_path.iterdir())
            assert remove_stale_temps(path) == [str(temp)]
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_one_clear_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    trained_like(path)
    good = path.read_bytes()

    def disk_full(f, data):
        f.write(data[: len(data) // 3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_bytes", disk_full)
    with pytest.raises(CheckpointWriteError) as info:
        trained_like(path)
    text = str(info.value)
    assert text.startswith(f"{path}: cannot write the checkpoint (") and "No space left on device" in text
    assert "the previous checkpoint is kept" in text and "\n" not in text
    assert isinstance(info.value, CnnkitError) and isinstance(info.value, OSError)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["c.safetensors"]
    with pytest.raises(CheckpointWriteError, match="nothing was written"):
        trained_like(tmp_path / "new.safetensors")
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_architecture_and_tensors_that_disagree_are_refused_before_building(tmp_path):
    path = tmp_path / "c.safetensors"
    trained_like(path)
    rewrite(path, architecture={"type": "Sequential", "layers": []})
    with pytest.raises(CheckpointError, match=r"holds model.0.bias, model.0.weight, model.2.bias ..., which the "
                                              r"stored architecture has no place for"):
        load_checkpoint(path)
    trained_like(path)
    arch = load_checkpoint(path).meta["architecture"]
    arch["layers"].append({"type": "FC", "in_features": 10, "out_features": 10, "bias": True})
    rewrite(path, architecture=arch)
    with pytest.raises(CheckpointError, match=r"has 3.weight of shape \(10, 10\), but the file holds no tensor "
                                              r"model.3.weight"):
        load_checkpoint(path)

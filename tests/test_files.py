"""cnnkit.files: atomic replacement of the files a user keeps."""

import os

import pytest

from cnnkit.files import atomic_file, atomic_write


def test_a_missing_folder_names_the_target_not_the_temporary_file(tmp_path):
    target = tmp_path / "no-such-folder" / "model.onnx"
    with pytest.raises(OSError) as info:
        atomic_write(target, b"data")
    assert info.value.filename == str(target) and ".tmp" not in str(info.value)


def test_the_new_file_follows_the_umask_and_an_error_keeps_the_old_one(tmp_path):
    target = tmp_path / "run.json"
    old = os.umask(0o022)
    try:
        atomic_write(target, b"first")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644          # not mkstemp's owner-only 0o600
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["run.json"]

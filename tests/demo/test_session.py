"""The demo's training thread: it trains through the Trainer, pauses, changes the learning
rate, switches nets, draws from the live net, and stopping saves a checkpoint that resumes."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from demohelp import TINY, wait_for

from cnnkit.checkpoint import load_checkpoint
from cnnkit.demo import DemoError, DemoSession, ModelCheckError, check_model
from cnnkit.demo.session import encode_image, encode_volume
from cnnkit.train import CHECKPOINT, TrainConfig, Trainer, read_metrics


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"model": TINY, "epochs": 200, "schedule": "constant", "lr": 0.01,
                          "optimizer": "sgd", "checkpoint_every": 0, **kw})


def steps(session) -> int:
    return session.points[-1][1] if session.points else 0


def test_trains_pauses_resumes_and_stopping_saves_a_checkpoint(small, tmp_path):
    s = DemoSession(config(), tmp_path / "run", dataset=small, snapshot_seconds=0.05).start()
    try:
        wait_for(lambda: steps(s) >= 5, what="5 steps")
        s.pause()
        wait_for(lambda: s.status["state"] == "paused", what="the pause")
        held = steps(s)
        wait_for(lambda: s.snapshot is not None, what="a snapshot")
        import time
        time.sleep(1.0)
        assert steps(s) == held  # paused: no new points
        s.resume()
        wait_for(lambda: steps(s) > held + 3, what="training to go on after resume")
        assert s.status["state"] == "training"
    finally:
        saved = s.close()
    assert saved == str(tmp_path / "run" / CHECKPOINT)
    assert s.status["state"] == "stopped" and "checkpoint saved" in s.status["message"]
    ckpt = load_checkpoint(saved)
    assert ckpt.step == steps(s)  # the checkpoint holds every step the page saw
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in records] == [p[1] for p in s.points]
    np.testing.assert_allclose([r["loss"] for r in records], [p[2] for p in s.points], rtol=1e-5)
    # and it resumes, in the demo or in cnnkit train, with its curves
    again = DemoSession(None, tmp_path / "run", dataset=small, resume=True)
    again._begin(again._trainer)
    assert [p[1] for p in again.points] == [p[1] for p in s.points]
    assert Trainer.resume(tmp_path / "run", dataset=small, progress=False).optimizer.steps == ckpt.step


def test_learning_rate_changes_from_the_next_step_and_is_saved(small, tmp_path):
    s = DemoSession(config(), tmp_path / "run", dataset=small).start()
    try:
        wait_for(lambda: steps(s) >= 3, what="3 steps")
        assert s.points[-1][4] == pytest.approx(0.01)
        s.set_lr(0.003)
        wait_for(lambda: s.points[-1][4] == pytest.approx(0.003), what="the new learning rate")
        first_new = next(p[1] for p in s.points if p[4] == pytest.approx(0.003))
        assert all(p[4] == pytest.approx(0.01) for p in s.points if p[1] < first_new)
        for bad in (0, -1, float("nan"), float("inf"), 11.0, "0.1", True, None):
            with pytest.raises(DemoError, match=r"lr must be a number in \(0, 10\]"):
                s.set_lr(bad)
    finally:
        saved = s.close()
    assert load_checkpoint(saved).meta["extra"]["config"]["lr"] == pytest.approx(0.003)


def test_a_new_net_stops_the_run_saving_it_and_trains_in_the_next_folder(small, tmp_path):
    s = DemoSession(config(), tmp_path / "run", dataset=small, snapshot_seconds=0.05).start()
    try:
        wait_for(lambda: steps(s) >= 3, what="3 steps")
        first_steps = steps(s)
        assert s.new_model("CONV3-6 -> RELU -> FC10") == 2
        wait_for(lambda: s.run_id == 2 and steps(s) >= 2, what="the second net's steps")
        assert s.run["run_dir"] == str(tmp_path / "run-2")
        assert s.run["spec"] == "INPUT[8x8x1] -> CONV3-6 -> RELU -> FC10"
        assert [layer["layer"] for layer in s.run["layers"]] == ["INPUT", "CONV3-6", "RELU", "FC10"]
        assert load_checkpoint(tmp_path / "run" / CHECKPOINT).step >= first_steps  # run 1 saved on the switch
        wait_for(lambda: s.snapshot and len(s.snapshot["volumes"]) == 3, what="the new net's pictures")
        with pytest.raises(DemoError, match=r"index must be an integer in \[0, 23\]"):
            s.select(24)
        s.select(5)
        wait_for(lambda: s.snapshot["selected"] == 5, what="the selected image's activations")
    finally:
        s.close()
    assert (tmp_path / "run-2" / CHECKPOINT).exists()


def test_snapshot_shows_the_live_net(small, tmp_path):
    s = DemoSession(config(epochs=1), tmp_path / "run", dataset=small, snapshot_seconds=0.05).start()
    try:
        wait_for(lambda: s.status["state"] == "finished", what="the one-epoch run to finish")
        s.select(3)
        wait_for(lambda: s.snapshot["selected"] == 3, what="a snapshot of image 3 after the run")
        snap = s.snapshot
    finally:
        s.close()
    assert "test accuracy" in s.status["message"]
    assert [v["label"] for v in snap["volumes"]] == ["CONV3-4 [8x8x4]", "RELU [8x8x4]", "POOL2 [4x4x4]",
                                                     "FC10 [1x1x10]"]
    conv = snap["volumes"][0]
    assert (conv["n"], conv["h"], conv["w"]) == (4, 8, 8)
    assert len(base64.b64decode(conv["data"])) == 4 * 8 * 8
    assert snap["filters"]["title"] == "layer 0: 4 filters of 3x3x1"
    assert len(snap["grid"]) == 24 and all(len(g["top3"]) == 3 for g in snap["grid"])
    # the grid's predictions are the finished net's
    from cnnkit.train import predict_scores
    net, norm = s._trainer.net if s._trainer else None, None
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    pred = predict_scores(ckpt.net, s.grid_X, ckpt.meta["normalization"]).argmax(1)
    assert [g["pred"] for g in snap["grid"]] == [str(p) for p in pred]
    del net, norm


def test_encoding_a_volume_and_an_image_for_the_page():
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    v = encode_volume("CONV3-2 [4x3x2]", (2, 3, 4), data)
    raw = np.frombuffer(base64.b64decode(v["data"]), np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(raw, np.round(data / 23 * 255).astype(np.uint8))  # one scale per volume
    big = encode_volume("x", (1, 200, 130), np.zeros((1, 200, 130), np.float32))
    assert (big["h"], big["w"]) == (50, 33)  # subsampled by 4 to at most 64 a side
    flat = encode_volume("FC600 [1x1x600]", (600,), np.linspace(-1, 1, 600, dtype=np.float32))
    assert flat["kind"] == "vector" and flat["n"] == 512 and flat["total"] == 600
    im = encode_image(np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.full((2, 2), 0.5)]).astype(np.float32))
    assert (im["h"], im["w"], im["c"]) == (2, 2, 3)
    assert list(base64.b64decode(im["data"])[:3]) == [0, 255, 128]


def test_a_model_is_checked_in_a_child_before_the_server_spends_memory():
    info = check_model("CONV3-8 -> RELU -> FC10", (1, 8, 8), 10, 32)
    assert info["params"] == 8 * 9 + 8 + 8 * 64 * 10 + 10
    with pytest.raises(ModelCheckError, match=r"(?s)3\.5 is not an integer.*\n  INPUT\[8x8x1\] -> CONV3-8/2p0 -> FC10\n {18}\^"):
        check_model("INPUT[8x8x1] -> CONV3-8/2p0 -> FC10", (1, 8, 8), 10, 32)
    with pytest.raises(ModelCheckError, match="does not match the data's images"):
        check_model("INPUT[32x32x3] -> FC10", (1, 8, 8), 10, 32)
    with pytest.raises(ModelCheckError, match=r"parameters; the demo trains at most 1,000"):
        check_model("FC100 -> FC10", (1, 8, 8), 10, 32, max_params=1000)
    # 30 GB of weights: refused by the child's memory cap, the server allocates nothing
    with pytest.raises(ModelCheckError, match="memory"):
        check_model("[CONV3-4096]*50 -> FC10", (1, 8, 8), 10, 32)
    with pytest.raises(ModelCheckError, match="at most 4000"):
        check_model("RELU -> " * 1000 + "FC10", (1, 8, 8), 10, 32)


def test_a_diverging_run_says_so_and_the_page_state_stays_valid_json(small, tmp_path):
    import json

    s = DemoSession(config(lr=1e4), tmp_path / "run", dataset=small, snapshot_seconds=0.05).start()
    try:
        wait_for(lambda: s.status["state"] == "error", what="the divergence")
        assert "became" in s.status["message"] and "try a smaller --lr" in s.status["message"]
        s.select(1)  # the idle worker still draws the (blown-up) net on request
        wait_for(lambda: s.snapshot and s.snapshot["selected"] == 1, what="a snapshot after the error")
        json.dumps(s.state(), allow_nan=False)  # no NaN reaches the page
        with pytest.raises(DemoError, match="the run is error; start a new net") as e:
            s.set_lr(0.01)
        assert e.value.status == 409
        s.new_model(TINY)  # and a new net trains
        wait_for(lambda: s.run_id == 2 and s.status["state"] == "training", what="the next run")
    finally:
        s.close()

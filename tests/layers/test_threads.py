"""CONV blocks on several threads give what one thread gives, and set_num_threads is tidy."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers.im2col import row_blocks
from cnnkit.layers.kernels.blocked import blocks

pytest.importorskip("threadpoolctl")

rng = np.random.default_rng(5)


@pytest.fixture
def two_threads():
    # many small blocks to share, shared even for these tiny layers; pools and ReLU: a block per image
    with ck.engine(threads=2, block_bytes=2048, min_share_bytes=1, image_block_bytes=1):
        yield


CASES = [
    (lambda: ck.Conv2D(6, 5, 3, padding=1), (4, 6, 9, 9)),                 # channels-last, flipped backward
    (lambda: ck.Conv2D(3, 5, 3, padding=1), (4, 3, 9, 9)),                 # channels-first
    (lambda: ck.Conv2D(6, 4, 3, stride=2, padding=1, groups=2), (4, 6, 9, 9)),   # col2im backward
    (lambda: ck.Conv2D(6, 4, 3, dilation=2, padding=2), (4, 6, 9, 9)),
    (lambda: ck.FC(7 * 3 * 3, 5), (4, 7, 3, 3)),
    (lambda: ck.MaxPool2D(2), (4, 3, 6, 6)),                               # reshape fast path
    (lambda: ck.MaxPool2D(3, 2, padding=1, rounding="ceil"), (4, 3, 8, 8)),
    (lambda: ck.AvgPool2D(3, 2), (4, 3, 7, 7)),
    (lambda: ck.ReLU(), (4, 3, 5, 5)),
]


@pytest.mark.parametrize("make,shape", CASES)
def test_threads_match_one_thread(make, shape, two_threads):
    layer = make().astype(np.float64)
    x = rng.standard_normal(shape)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    ck.set_num_threads(1)
    np.testing.assert_allclose(layer.forward(x), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.backward(dout), dx, rtol=1e-12, atol=1e-12)
    for k, v in layer.grads.items():
        np.testing.assert_allclose(v, grads[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make,shape", CASES[:2] + CASES[5:])
def test_gradcheck_on_two_threads(make, shape, two_threads):
    assert ck.gradcheck(make(), rng.standard_normal(shape)) < 1e-5


def test_blocks_are_shared_between_threads(two_threads):
    cut = blocks(4, 9, 9 * 54 * 4, workers=2)
    assert len(cut) >= 2 and len(cut) % 2 == 0


@pytest.mark.parametrize("n,budget_images", [(64, 6.4), (7, 2), (3, 1), (5, 10), (2, 1)])
def test_equal_shares_of_the_blocks_are_equal_shares_of_the_images(n, budget_images):
    per_image = 32 * 36864                      # 32 output rows of the CIFAR 32->32 layer's X_col
    budget = int(budget_images * per_image)
    cut = list(row_blocks(n, 32, 36864, budget, workers=2))
    covered = np.zeros(n, int)
    for n0, n1, h0, h1 in cut:
        assert (h0, h1) == (0, 32) and 0 < (n1 - n0) * per_image <= budget
        covered[n0:n1] += 1
    assert (covered == 1).all()                 # each image once
    half = len(cut) // 2                        # run_shares' two shares
    images = [sum(b[1] - b[0] for b in share) for share in (cut[:half], cut[half:])]
    assert abs(images[0] - images[1]) <= 1, cut
    one = next(row_blocks(n, 32, 36864, budget))    # the memory model's block bounds them all
    assert max(b[1] - b[0] for b in cut) <= one[1] - one[0]


def test_small_layers_stay_on_one_thread(two_threads):
    with ck.engine(min_share_bytes=1 << 20, block_bytes=8 << 20):
        assert len(blocks(4, 9, 9 * 54 * 4, workers=2)) == 1


def test_two_thread_results_are_repeatable(two_threads):
    conv = ck.Conv2D(6, 5, 3, padding=1)
    x = rng.standard_normal((4, 6, 9, 9), dtype=np.float32)
    conv.backward(np.ones(conv.forward(x).shape, np.float32))
    first = conv.grads["weight"].copy()
    for _ in range(3):
        conv.backward(np.ones(conv.forward(x).shape, np.float32))
        assert np.array_equal(conv.grads["weight"], first)


def test_set_num_threads_holds_blas_at_one_and_restores_it():
    from threadpoolctl import threadpool_info
    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    ck.set_num_threads(2)
    assert ck.get_num_threads() == 2
    assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
    ck.set_num_threads(1)
    assert [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"] == before
    with pytest.raises(ck.CnnkitError, match="n must be >= 1"):
        ck.set_num_threads(0)


class Probe(ck.ReLU):
    """A ReLU that notes the engine's threads and BLAS's while the network runs it."""

    seen: list = []

    def forward(self, x):
        from threadpoolctl import threadpool_info
        blas = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}   # every BLAS loaded
        Probe.seen.append((ck.get_num_threads(), blas))
        if x.shape[1] == 0:
            raise ck.ShapeError("probe: no channels")
        return super().forward(x)


def test_one_image_runs_on_this_thread_while_blas_shares_its_gemms():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    ck.manual_seed(1)
    net = ck.Sequential(ck.Conv2D(3, 8, 3, padding=1), Probe(), ck.MaxPool2D(2), ck.Flatten(),
                        ck.FC(8 * 4 * 4, 5)).astype(np.float64)
    x = rng.standard_normal((2, 3, 8, 8))
    want = [net.forward(x[i:i + 1]) for i in range(2)]     # one thread, as NumPy is
    with ck.engine(threads=2):
        Probe.seen.clear()
        one = net.forward(x[:1])
        assert Probe.seen == [(1, {2})]                      # the layers on this thread, BLAS on two
        assert ck.get_num_threads() == 2 and blas_threads() == {1}     # and back afterwards
        net.backward(np.ones_like(one))
        Probe.seen.clear()
        both = net.forward(x)
        assert Probe.seen == [(2, {1})]                      # two images: cnnkit's threads share blocks
        with ck.engine(blas_share_images=0):
            Probe.seen.clear()
            net.forward(x[:1])
            assert Probe.seen == [(2, {1})]
        with pytest.raises(ck.ShapeError, match="probe"):
            ck.Sequential(Probe()).forward(np.zeros((1, 0, 2, 2)))
        assert ck.get_num_threads() == 2 and blas_threads() == {1}     # restored after an error too
    np.testing.assert_allclose(one, want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(both, np.concatenate(want), rtol=1e-12, atol=1e-12)


def test_run_blocks_folds_in_block_order_whichever_thread_ran_a_block():
    import threading
    import time

    from cnnkit.layers.runtime import runtime

    parts = [rng.standard_normal(50).astype(np.float32) * 10.0 ** (i % 5) for i in range(23)]
    want = parts[0].copy()
    for p in parts[1:]:
        want = want + p                                  # first to last, float32
    ran: dict[int, list[int]] = {}

    def one(i):
        ran.setdefault(threading.get_ident(), []).append(i)
        main = threading.current_thread() is threading.main_thread()
        time.sleep(0.02 if main else 0.002)              # this thread is slow: the other takes more blocks
        return parts[i].copy()

    with ck.engine(threads=2):
        total, = runtime.run_blocks(one, list(range(23)), fold=lambda t, p: np.add(t, p, out=t))
        assert np.array_equal(total, want)               # bit for bit: the order is the blocks'
        counts = sorted(len(v) for v in ran.values())
        assert len(counts) == 2 and counts[1] >= 2 * counts[0], ran     # taken as each thread came free
        assert runtime.run_blocks(lambda i: i * i, list(range(9))) == [i * i for i in range(9)]


def test_run_blocks_raises_a_blocks_error_after_every_thread_stopped():
    from cnnkit.layers.runtime import runtime

    def one(i):
        if i == 3:
            raise ValueError("block 3")
        return i

    with ck.engine(threads=2):
        with pytest.raises(ValueError, match="block 3"):
            runtime.run_blocks(one, list(range(8)), fold=lambda t, p: t + p)
        assert runtime.run_blocks(one, [0, 1, 2], fold=lambda t, p: t + p) == [3]    # the pool still works

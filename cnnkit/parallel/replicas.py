"""Data parallelism: every rank holds the whole network and trains on its shard of each batch.

One step on R ranks (CS231n notes, "Neural Networks 3": mini-batch gradient descent, the
mini-batch spread over machines):

1. every rank draws the same global batch of B images from the same seeded order a
   single process would use, and keeps its shard: a contiguous slice of B / R images
   (rank r: images [r B/R, (r + 1) B/R)); an uneven last batch of an epoch is split
   as evenly as it goes, the first ranks taking one image more;
2. forward and backward on the shard, with the loss gradient scaled by n_r / B, so the
   gradients summed over ranks are exactly the gradient of the global batch's mean loss;
3. ONE in-place MPI Allreduce (sum) over a flat buffer holding every gradient, followed
   by a few numbers: the shard's loss sum and correct count, each rank's stop request and
   failure flag. The gradients become views into that buffer, and every rank takes the
   same optimizer step, so the weights stay identical on every rank.

Batch norm normalises with each shard's statistics (as PyTorch's DistributedDataParallel
without SyncBatchNorm does), so with BatchNorm2D R ranks are not the same computation as
one process; the running statistics are averaged over ranks whenever they are
checkpointed or evaluated.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import zlib
from typing import Any, NamedTuple

import numpy as np

from ..layers import softmax_loss
from .comm import OFF_VAR, Comm, ParallelError

# the numbers after the gradients in the step's buffer: loss sum, correct count, then
# per rank a stop request and a failure flag
_LOSS, _CORRECT, _HEAD = 0, 1, 2


class BatchSplitError(ParallelError):
    """--batch-size does not divide by the number of ranks."""


class RankFailed(ParallelError):
    """One or more ranks raised during a step; raised on every rank so all stop together."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


class StepResult(NamedTuple):
    """The global batch's mean loss, its correct count, and whether any rank asked to stop."""

    loss: float
    correct: int
    stop: bool


def check_batch_size(batch_size: int, ranks: int) -> int:
    """The per-rank shard size batch_size / ranks; BatchSplitError with the numbers if it isn't whole."""
    if batch_size % ranks:
        lower, upper = batch_size - batch_size % ranks, batch_size + ranks - batch_size % ranks
        raise BatchSplitError(
            f"--batch-size {batch_size} is the global batch and does not divide by the {ranks} ranks "
            f"({batch_size} / {ranks} = {batch_size / ranks:.4g}); use a multiple of {ranks} such as "
            f"{lower or upper} or {upper}, or run on a number of ranks that divides {batch_size}")
    return batch_size // ranks


def shard_bounds(n: int, rank: int, ranks: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous shard of n items; the first n % ranks ranks take one more."""
    base, extra = divmod(n, ranks)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class GradientBuffer:
    """One flat array holding every parameter's gradient, then ``extra`` numbers (the step's counters).

    ``pack(net)`` copies the gradients in (zeros where a layer has none); after the
    Allreduce ``unpack(net)`` points each layer's grads at its slice of the buffer (views,
    no copy back). The buffer's dtype is the parameters' common dtype."""

    def __init__(self, net: Any, extra: int) -> None:
        self.slots = [(layer, key, layer.params[key].shape, layer.params[key].dtype)
                      for layer in net.layers() for key in layer.params]
        sizes = [int(np.prod(shape)) for _, _, shape, _ in self.slots]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.numel = int(self.offsets[-1])
        dtype = np.result_type(*[d for *_, d in self.slots]) if self.slots else np.float32
        self.flat = np.zeros(self.numel + extra, dtype=dtype)
        self.grads = self.flat[:self.numel]
        self.tail = self.flat[self.numel:]

    def pack(self, net: Any, zero: bool = False) -> np.ndarray:
        """Copy every gradient into the buffer (all zeros with zero=True: a rank with nothing to add)."""
        for (layer, key, shape, _), a, b in zip(self.slots, self.offsets[:-1], self.offsets[1:]):
            g = None if zero else layer.grads.get(key)
            if g is None:
                self.flat[a:b] = 0
            elif g.shape != shape:
                raise ParallelError(f"{layer!r}: gradient of '{key}' has shape {g.shape}, the parameter {shape}")
            else:
                self._slot(layer, key, a, b)[...] = g
        return self.flat

    def unpack(self, net: Any) -> None:
        """Point every layer's grads at its (reduced) slice of the buffer."""
        for (layer, key, _, dtype), a, b in zip(self.slots, self.offsets[:-1], self.offsets[1:]):
            view = self._slot(layer, key, a, b)
            layer.grads[key] = view if view.dtype == dtype else view.astype(dtype)

    def _slot(self, layer: Any, key: str, a: int, b: int) -> np.ndarray:
        """flat[a:b] as the parameter's shape in the parameter's memory order (channels-last
        filters stay channels-last), so gradients copy in and the update runs without a
        transposing pass."""
        p = layer.params[key]
        order = sorted(range(p.ndim), key=lambda axis: -abs(p.strides[axis])) if p.ndim else []
        stored = self.flat[a:b].reshape([p.shape[axis] for axis in order])
        return stored.transpose(np.argsort(order)) if order else stored.reshape(p.shape)


class DataParallel:
    """Data-parallel training over a Comm: shards, the one Allreduce per step, BN statistics.

    ``step(net, X, y, total)`` runs forward and backward on this rank's shard (X, y) of a
    global batch of ``total`` images and leaves the global mean gradient in the layers'
    grads, the same on every rank."""

    def __init__(self, comm: Comm, batch_size: int, settings: dict | None = None) -> None:
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.shard_size = check_batch_size(batch_size, comm.size)
        # ranks given different settings would train different things in lockstep: refuse
        text = json.dumps(settings if settings is not None else {"batch_size": batch_size}, sort_keys=True)
        differ = [r for r, t in enumerate(comm.allgather_text(text, "comparing the ranks' settings")) if t != text]
        if differ:
            raise ParallelError(f"ranks {differ} were started with other settings than rank {self.rank}; one "
                                f"data-parallel run needs the same settings on every rank (set {OFF_VAR}=0 to "
                                f"run one independent training per rank instead)")
        self.stop = False  # every rank's agreed stop request as of the last step
        self._buffer: GradientBuffer | None = None
        self._buffers_stale = False
        self.allreduce_seconds = 0.0  # time in the steps' Allreduce so far, waiting for slower ranks included

    # --- data --------------------------------------------------------------------------
    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch (N, ...) -> (N_r, ...)."""
        start, stop = shard_bounds(len(batch), self.rank, self.size)
        return batch[start:stop]

    # --- the step ---------------------------------------------------------------------
    def step(self, net: Any, X: np.ndarray, y: np.ndarray, total: int, stop: bool = False,
             step: int | None = None) -> StepResult:
        """Forward + backward on the shard, then one Allreduce of gradients and counters.

        X (N_r, C, H, W), y (N_r,) are this rank's shard of a global batch of ``total``
        images; ``stop`` is this rank's stop request (Ctrl-C). Afterwards every rank's
        grads hold the global mean gradient. RankFailed on every rank if any rank raised."""
        if self._buffer is None:
            self._buffer = GradientBuffer(net, _HEAD + 2 * self.size)
            self._own_streams(net)
        buf = self._buffer
        n, loss, correct, failure = len(y), 0.0, 0, None
        try:
            if n:
                with np.errstate(over="ignore", invalid="ignore"):
                    scores = net.forward(X)
                    loss, dscores = softmax_loss(scores, y)
                    # n / total: the shards' summed gradients are the global batch's mean gradient
                    net.backward(dscores * dscores.dtype.type(n / total))
                correct = int((scores.argmax(1) == y).sum())
            buf.pack(net, zero=n == 0)
        except Exception as e:  # noqa: BLE001 - any failure goes to the others in the same Allreduce
            failure = e
            buf.pack(net, zero=True)
        buf.tail[:] = 0
        buf.tail[_LOSS], buf.tail[_CORRECT] = loss * n, correct
        buf.tail[_HEAD + self.rank] = bool(stop)
        buf.tail[_HEAD + self.size + self.rank] = failure is not None
        where = f"step {step}" if step is not None else "a step"
        t0 = time.perf_counter()
        self.comm.sum_(buf.flat, f"the gradient Allreduce of {where}")
        self.allreduce_seconds += time.perf_counter() - t0
        failed = [int(r) for r in np.flatnonzero(buf.tail[_HEAD + self.size:])]
        if failed:
            self._fail(failed, failure, where)
        buf.unpack(net)
        self._buffers_stale = True
        self.stop = bool(buf.tail[_HEAD:_HEAD + self.size].any())
        return StepResult(float(buf.tail[_LOSS]) / total, round(float(buf.tail[_CORRECT])), self.stop)

    def _own_streams(self, net: Any) -> None:
        """Give each rank its own Dropout masks: rank r > 0 jumps its layers' generators r times
        ahead (2^127 draws each for PCG64), so shards at the same position don't share a mask."""
        if self.rank == 0:
            return
        for layer in net.layers():
            rng = getattr(layer, "rng", None)
            if isinstance(rng, np.random.Generator):
                jumped = getattr(rng.bit_generator, "jumped", None)
                if jumped is not None:
                    layer.rng = np.random.Generator(jumped(self.rank))
                else:  # a bit generator without jumps (SFC64): a seed of its own
                    layer.rng = np.random.default_rng([int(rng.integers(2**63)), self.rank])

    def _fail(self, failed: list[int], failure: BaseException | None, where: str) -> None:
        text = "" if failure is None else f"{type(failure).__name__}: {failure}"
        reports = self.comm.allgather_text(text)  # every rank is here: the Allreduce told all of them
        if failure is not None:
            print(f"cnnkit: rank {self.rank} failed in {where}:\n"
                  + "".join(traceback.format_exception(failure)), end="", file=sys.stderr, flush=True)
        names = "; ".join(f"rank {r}: {reports[r]}" for r in failed)
        raise RankFailed(f"{'rank' if len(failed) == 1 else 'ranks'} {', '.join(map(str, failed))} of {self.size} "
                         f"failed in {where} ({names}); all ranks stopped before the update, the last checkpoint "
                         f"is as it was", failed) from failure

    # --- batch norm statistics, checkpoints, evaluation -------------------------------
    def sync_buffers(self, net: Any) -> None:
        """Average every floating buffer (BatchNorm2D running_mean, running_var) over ranks, in place.

        A no-op until a step has changed them since the last average, so averaging twice
        never drifts (a mean of R equal floats is not always exactly that float)."""
        if not self._buffers_stale:
            return
        slots = [(layer, k) for layer in net.layers() for k, v in layer.buffers.items()
                 if np.issubdtype(v.dtype, np.floating)]
        if slots:
            flat = np.concatenate([np.asarray(layer.buffers[k], np.float64).ravel() for layer, k in slots])
            self.comm.sum_(flat, "averaging the batch-norm statistics")
            flat /= self.size
            offset = 0
            for layer, k in slots:
                old = layer.buffers[k]
                layer.buffers[k] = flat[offset:offset + old.size].reshape(old.shape).astype(old.dtype)
                offset += old.size
        self._buffers_stale = False

    def before_checkpoint(self, net: Any) -> bool:
        """Average the BN statistics, check every rank holds the same weights; True on the rank that writes (0)."""
        self.sync_buffers(net)
        crc = 0
        for layer in net.layers():
            for key in sorted(layer.params):
                crc = zlib.crc32(np.ascontiguousarray(layer.params[key]).data, crc)
        crcs = self.comm.allgather_text(str(crc))
        differ = [r for r, c in enumerate(crcs) if c != crcs[0]]
        if differ:
            raise ParallelError(f"ranks {differ} hold different weights from rank 0 before the checkpoint: the MPI "
                                f"library's Allreduce did not give every rank the same sum; nothing was written")
        return self.rank == 0

    def accuracy(self, net: Any, split: Any, normalization: dict | None, batch_size: int) -> float:
        """Fraction of split.X classified as split.y, each rank scoring its shard of the split (nan if empty)."""
        from ..train import predict_scores

        if len(split.y) == 0:
            return float("nan")
        self.sync_buffers(net)
        start, stop = shard_bounds(len(split.y), self.rank, self.size)
        counts = np.zeros(1, np.float64)
        if stop > start:
            scores = predict_scores(net, split.X[start:stop], normalization, batch_size)
            counts[0] = (scores.argmax(1) == split.y[start:stop]).sum()
        self.comm.sum_(counts, "the evaluation")
        return float(counts[0]) / len(split.y)

    def announce(self, batch_size: int) -> None:
        """Rank 0 prints the run's first line: the rank count, the split, and which PID is which rank."""
        if self.rank == 0:
            print(f'cnnkit: data-parallel over MPI, "ranks": {self.size}: global batch {batch_size} = '
                  f"{self.size} x {self.shard_size} images ({self.comm.library()}; {self.comm.describe()})",
                  file=sys.stderr, flush=True)


class QuietLog:
    """The metrics log of ranks other than 0: takes the records and writes nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass

"""Images per second of one training step of the notes' CIFAR-10 net: cnnkit vs PyTorch on the CPU.

The net is ``INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*2 -> FC512 -> RELU -> FC10``;
a step is forward, softmax loss, backward and a plain SGD update, on a batch of 64. Both
run in this process with the same thread count (``cnnkit.set_num_threads``,
``torch.set_num_threads``), PyTorch starting from cnnkit's initial weights.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train.py   # see README
    python benchmarks/train.py --steps 5 --threads 1

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set to work around old
OpenBLAS bugs they also slow a current NumPy down: unset both for this command alone.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import cnnkit as ck

SPEC = "INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*2 -> FC512 -> RELU -> FC10"


def torch_twin(net):
    """The same layers in torch.nn, with cnnkit's weights copied in."""
    import torch
    from torch import nn

    layers = []
    for layer in net.layers_:
        name = type(layer).__name__
        if name == "Conv2D":
            c = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
            layers.append(c)
        elif name == "ReLU":
            layers.append(nn.ReLU())
        elif name == "MaxPool2D":
            layers.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
        elif name == "FC":
            layers += [nn.Flatten(), nn.Linear(layer.params["weight"].shape[1], layer.params["weight"].shape[0])]
        elif name == "Flatten":
            layers.append(nn.Flatten())
        else:
            raise SystemExit(f"benchmarks/train.py: no PyTorch twin for {name}")
    model = nn.Sequential(*[l for i, l in enumerate(layers)
                            if not (isinstance(l, nn.Flatten) and i and isinstance(layers[i - 1], nn.Flatten))])
    tparams = [p for p in model.parameters()]
    cparams = [p for _, p in net.named_parameters()]
    with torch.no_grad():
        for tp, cp in zip(tparams, cparams):
            tp.copy_(torch.from_numpy(cp.reshape(tp.shape)))
    return model


def cnnkit_step(net, opt, X, y):
    scores = net.forward(X)
    loss, dscores = ck.softmax_loss(scores, y)
    net.backward(dscores)
    opt.step()
    return loss


def time_steps(step, steps: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    args = parser.parse_args()

    import torch

    from cnnkit.optim import SGD

    torch.set_num_threads(args.threads)
    ck.set_num_threads(args.threads)   # cnnkit's threads for CONV/FC, BLAS on one thread inside

    rng = np.random.default_rng(0)
    X = rng.random((args.batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    ck.manual_seed(0)
    net = ck.build(SPEC)
    net.input_grad = False  # as in PyTorch, where the images don't require grad
    model = torch_twin(net)
    opt = SGD(net, lr=1e-3)
    topt = torch.optim.SGD(model.parameters(), lr=1e-3)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tX), ty)
        loss.backward()
        topt.step()

    # same starting weights, same batch: the first losses agree (a check that both run the same net)
    l_ck = cnnkit_step(net, opt, X, y)
    l_t = torch.nn.functional.cross_entropy(model(tX), ty).item()
    ck_times = time_steps(lambda: cnnkit_step(net, opt, X, y), args.steps)
    t_times = time_steps(torch_step, args.steps)

    ck_ms, t_ms = 1e3 * np.median(ck_times), 1e3 * np.median(t_times)
    print(f"net: {SPEC}")
    print(f"batch {args.batch}, {args.threads} threads (cnnkit.set_num_threads and torch), median of {args.steps} steps; "
          f"first loss cnnkit {l_ck:.5f} vs torch {l_t:.5f}")
    print(f"{'':10}{'ms/step':>10}{'images/s':>12}")
    print(f"{'cnnkit':10}{ck_ms:>10.1f}{args.batch / ck_ms * 1e3:>12.0f}")
    print(f"{'pytorch':10}{t_ms:>10.1f}{args.batch / t_ms * 1e3:>12.0f}")
    print(f"ratio cnnkit / pytorch images/s: {t_ms / ck_ms:.2f} (PyTorch is {ck_ms / t_ms:.1f}x faster)")


if __name__ == "__main__":
    main()

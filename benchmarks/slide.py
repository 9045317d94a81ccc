"""Dense evaluation: the converted net on a 384 image vs the crop loop and vs PyTorch's dense pass.

The net is VGG-16's layout at a quarter of its width (224x224x3 windows, five POOL2, total
stride 32, CONV3 with P = 1, FC1024 -> FC1024 -> FC1000). The notes' example: a 384x384
image holds 6x6 = 36 windows of 224 at stride 32. Timed, each the best of several runs:

* crop loop: the original net, one forward per 224 crop, 36 forwards;
* crop batch: the 36 crops as one batch of 36 (what a careful user of the crop loop does);
* dense: the converted net (cnnkit.convert.convolutionalize), one forward over the image;
* dense (torch): a torch.nn module with the same layers and weights, the same forward.

``--gap`` also measures how far the dense scores are from the crop loop's where CONVs
zero-pad (the notes call the two "the same"): a ConvNet trained on the embedded digits,
slid over mosaics of test digits, and every zoo model (random weights) at a small input.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/slide.py --gap   # see README
    python benchmarks/slide.py --repeat 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import cnnkit as ck
from cnnkit import models
from cnnkit.convert import convolutionalize, crop_loop, resize, slide


def vgg_quarter(width: int = 16, fc: int = 1024) -> str:
    """VGG-16 (configuration D) with `width` filters in the first stage, doubling to 8 * width."""
    w = [width, 2 * width, 4 * width, 8 * width, 8 * width]
    return (f"INPUT[224x224x3] -> [CONV3-{w[0]} -> RELU]*2 -> POOL2 -> [CONV3-{w[1]} -> RELU]*2 -> POOL2"
            f" -> [CONV3-{w[2]} -> RELU]*3 -> POOL2 -> [CONV3-{w[3]} -> RELU]*3 -> POOL2"
            f" -> [CONV3-{w[4]} -> RELU]*3 -> POOL2 -> FC{fc} -> RELU -> DROPOUT -> FC{fc} -> RELU -> DROPOUT"
            f" -> FC1000")


def best_of(fn, repeat: int) -> float:
    """Best wall time of `repeat` calls after one warm-up call (the machine is shared)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def torch_dense(conv):
    """The converted net's layers in torch.nn (Conv2d, ReLU, MaxPool2d, Dropout), same weights, eval mode."""
    import torch
    from torch import nn

    layers = []
    for layer in conv.children():
        if isinstance(layer, ck.Conv2D):
            c = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
            with torch.no_grad():
                c.weight.copy_(torch.from_numpy(layer.params["weight"]))
                c.bias.copy_(torch.from_numpy(layer.params["bias"]))
            layers.append(c)
        elif isinstance(layer, ck.ReLU):
            layers.append(nn.ReLU())
        elif isinstance(layer, ck.MaxPool2D):
            layers.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, ck.Dropout):
            layers.append(nn.Dropout(layer.p))
        else:
            raise SystemExit(f"benchmarks/slide.py: no PyTorch twin for {type(layer).__name__}")
    return nn.Sequential(*layers).eval()


def smooth_image(shape, seed: int) -> np.ndarray:
    """A (C, H, W) image with structure at several scales (noise resized up), roughly unit variance."""
    rng = np.random.default_rng(seed)
    C, H, W = shape
    img = np.zeros((1, C, H, W), np.float32)
    for cells in (4, 12, 48):
        img += resize(rng.standard_normal((1, C, cells, cells)).astype(np.float32), H / cells)[..., :H, :W]
    return (img[0] / img.std()).astype(np.float32)


def speed(args) -> None:
    ck.manual_seed(0)
    net = ck.build(vgg_quarter(args.width, args.fc)).eval()
    conv = convolutionalize(net)
    x = smooth_image((3, 384, 384), 0)
    crops = np.stack([x[:, 32 * i:32 * i + 224, 32 * j:32 * j + 224] for i in range(6) for j in range(6)])

    t_loop = best_of(lambda: crop_loop(net, x), max(1, args.repeat // 2))
    t_batch = best_of(lambda: net.forward(crops), args.repeat)
    t_dense = best_of(lambda: conv.forward(x[None]), args.repeat)
    t_slide16 = best_of(lambda: slide(conv, x, stride=16), max(1, args.repeat // 2))
    dense = conv.forward(x[None])[0]
    loop = crop_loop(net, x)

    import torch
    model = torch_dense(conv)
    tx = torch.from_numpy(x[None])
    with torch.no_grad():
        t_torch = best_of(lambda: model(tx), args.repeat)
        tdense = model(tx).numpy()[0]

    print(f"net: {vgg_quarter(args.width, args.fc)}")
    print(f"image 384x384, window 224, total stride 32: 6x6 = 36 windows;  threads={args.threads}  "
          f"numpy {np.__version__}  torch {torch.__version__}")
    print(f"{'evaluation':<38} {'ms':>9} {'crop loop / this':>17}")
    rows = [("crop loop (36 forwards of 1 crop)", t_loop), ("crop batch (1 forward of 36 crops)", t_batch),
            ("dense, converted net (1 forward)", t_dense), ("dense, PyTorch same layers (1 forward)", t_torch),
            ("dense at stride 16 (4 passes, 121 windows)", t_slide16)]
    for name, t in rows:
        print(f"{name:<38} {1e3 * t:>9.1f} {t_loop / t:>16.1f}x")
    print(f"dense vs crop loop: {t_loop / t_dense:.1f}x faster (target >= 5x: "
          f"{'met' if t_loop / t_dense >= 5 else 'MISSED'}); vs crop batch {t_batch / t_dense:.1f}x")
    print(f"cnnkit dense / PyTorch dense: {t_dense / t_torch:.2f} (max |cnnkit - torch| = "
          f"{np.abs(dense - tdense).max():.2e})")
    gap = np.abs(dense - loop)
    print(f"padding gap on this net (random weights): max |dense - crop| = {gap.max():.3g} "
          f"({gap.max() / np.abs(loop).max():.1%} of max |score|), top-1 agrees in "
          f"{(dense.argmax(0) == loop.argmax(0)).mean():.0%} of the 36 windows")


def gap_summary(dense: np.ndarray, loop: np.ndarray) -> str:
    """max |diff| relative to the largest |score|, and top-1 agreement over windows."""
    diff = np.abs(dense - loop).max()
    agree = (dense.argmax(-3) == loop.argmax(-3)).mean()
    return f"{diff:>10.3g} {diff / np.abs(loop).max():>9.1%} {agree:>9.0%}"


def gap_digits(args) -> None:
    """A padded ConvNet trained on the embedded digits, slid over 3x3 mosaics of test digits."""
    from cnnkit.train import TrainConfig, Trainer, normalize

    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(TrainConfig(data="digits", epochs=args.epochs, seed=0, checkpoint_every=0), run,
                          progress=False)
        result = trainer.fit()
    net, norm, test = trainer.net.eval(), trainer.normalization, trainer.dataset.test
    rng = np.random.default_rng(0)
    n = (len(test.y) // 9) * 9
    order = rng.permutation(len(test.y))[:n].reshape(-1, 3, 3)
    X = normalize(test.X, norm)
    mosaics = np.stack([np.block([[X[k, 0] for k in row] for row in grid]) for grid in order])[:, None]
    r = slide(net, mosaics)                                     # (M, 10, 5, 5): windows every 4 px
    loop = crop_loop(net, mosaics)
    labels = test.y[order]                                       # (M, 3, 3): the digit under aligned windows
    aligned_dense = r.score_map[:, :, ::2, ::2].argmax(1)
    aligned_loop = loop[:, :, ::2, ::2].argmax(1)
    print(f"\nzero-padding gap, trained: {net.spec.split(' -> ', 1)[1]}")
    print(f"  digits test accuracy {result.test_acc:.2%} after {args.epochs} epochs; {len(order)} mosaics of 3x3 "
          f"test digits (24x24), windows of 8 every 4 px: {r.score_map.shape[-2]}x{r.score_map.shape[-1]} per mosaic")
    diff = np.abs(r.score_map - loop)
    print(f"  max |dense - crop| {diff.max():.3g}, mean {diff.mean():.3g} (scores' std {loop.std():.3g}); "
          f"top-1 agrees in {(r.score_map.argmax(1) == loop.argmax(1)).mean():.1%} of {loop[:, 0].size} windows")
    print(f"  on the {labels.size} windows aligned with a digit: crop loop {np.mean(aligned_loop == labels):.1%} "
          f"correct, dense {np.mean(aligned_dense == labels):.1%}, same top-1 in "
          f"{np.mean(aligned_dense == aligned_loop):.1%}")


def gap_zoo(args) -> None:
    """Every zoo model at a small input (real widths, random weights), image = window + 2 strides."""
    grow = args.zoo_size - 32   # the AlexNets' smallest inputs are 63 and 67, the others' 32
    sizes = {"alexnet": 63 + grow, "alexnet_original": 67 + grow, "zfnet": 63 + grow}
    print(f"\nzero-padding gap, zoo at {args.zoo_size} (random weights, 3x3 windows of a smooth random image):")
    print(f"  {'model':<17} {'window':>6} {'stride':>6} {'max|diff|':>10} {'of max|s|':>9} {'top-1 =':>9}")
    for name in models.names():
        size = sizes.get(name, 32 if name.startswith("cifar") or name == "lenet5" else args.zoo_size)
        ck.manual_seed(0)
        net = models.get(name, num_classes=100, input_size=size).eval()
        conv = convolutionalize(net)
        S = conv.total_stride[0]
        x = smooth_image((net.input_shape[0], size + 2 * S, size + 2 * S), 1)
        print(f"  {name:<17} {size:>6} {S:>6} {gap_summary(slide(conv, x).score_map, crop_loop(net, x))}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CNNKIT_BENCH_THREADS", os.cpu_count() or 1)))
    parser.add_argument("--width", type=int, default=16, help="filters of the first stage (VGG-16: 64)")
    parser.add_argument("--fc", type=int, default=1024, help="hidden FC neurons (VGG-16: 4096)")
    parser.add_argument("--gap", action="store_true", help="also measure the zero-padding gap")
    parser.add_argument("--epochs", type=int, default=10, help="digits training epochs for --gap")
    parser.add_argument("--zoo-size", type=int, default=64, help="window of the ImageNet zoo models for --gap "
                        "(32 or more, a multiple of 32 apart)")
    args = parser.parse_args()
    import threadpoolctl
    import torch

    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    ck.set_num_threads(args.threads)
    speed(args)
    if args.gap:
        gap_digits(args)
        gap_zoo(args)


if __name__ == "__main__":
    main()

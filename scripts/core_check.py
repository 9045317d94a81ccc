"""CI's check that the core install (NumPy only) works: import, forward, backward, update,
and no optional package is imported on the way."""

import sys

import numpy as np

import cnnkit as ck

# Seeded, and a step small enough that one SGD update lowers the loss from any He init
# (lr 0.1 overshot for 4 seeds in 200; 0.03 for none).
ck.manual_seed(0)
net = ck.build("INPUT[8x8x1] -> [CONV3-8 -> RELU]*2 -> POOL2 -> FC10")
x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
y = np.array([0, 1, 2, 3])
loss, dscores = ck.softmax_loss(net.forward(x), y)
net.backward(dscores)
ck.optim.SGD(net, lr=0.03).step()
after, _ = ck.softmax_loss(net.forward(x), y)
optional = sorted(m for m in ("tqdm", "matplotlib", "safetensors", "PIL", "threadpoolctl", "torch", "onnx",
                               "onnxruntime", "mpi4py", "starlette", "uvicorn") if m in sys.modules)
assert not optional, f"the core imported optional packages: {optional}"
assert after < loss, (loss, after)
print(f"core install: cnnkit {ck.__version__} on NumPy {np.__version__} alone; loss {loss:.3f} -> {after:.3f}")

"""cnnkit's own benchmark suite (``cnnkit bench``): cnnkit against PyTorch on the CPU, same process, same threads.

* cases: the single layers, whole networks (AlexNet, VGG-11, GoogLeNet v1, ResNet-18,
  ResNet-50 at 224), the CIFAR-10 net's training step;
* timing: each side's best of back-to-back calls, thread settings, the sgemm peak;
* flops: what a layer or a network computes, as convnet-benchmarks counts it;
* twins: any cnnkit network in plain torch.nn with cnnkit's weights (no torchvision);
* table: ms, GFLOP/s, % of the sgemm peak, cnnkit / PyTorch;
* memory: a training step's peak memory, each side in a fresh process;
* profile: where one training step's time goes, layer by layer;
* suite: the sections as one run (what the command calls).

Nothing here imports torch until a comparison asks for it.
"""

from .cases import CIFAR_SPEC, LAYER_CASES, NET_CASES, SCRIPT_CASES, run_layer_case, run_net_case, run_train
from .errors import BenchError
from .flops import layer_flops, net_flops
from .profile import Profile, profile_step
from .suite import SECTIONS, Settings, run
from .table import Row, format_table, write_json
from .timing import best_of, openblas_warning, sgemm_peak, time_steps, torch_available
from .twins import check_twin, torch_twin

__all__ = ["CIFAR_SPEC", "LAYER_CASES", "NET_CASES", "SCRIPT_CASES", "run_layer_case", "run_net_case", "run_train",
           "BenchError", "layer_flops", "net_flops", "Profile", "profile_step", "SECTIONS", "Settings", "run", "Row",
           "format_table", "write_json", "best_of", "openblas_warning", "sgemm_peak", "time_steps",
           "torch_available", "check_twin", "torch_twin"]

#!/usr/bin/env python3
"""PyTorch on CUDA under xpnet_bench.py's protocol, for the GPU comparison in gpu_check.py.

Exactly the loop benchmarks/xpnet_bench.py runs through bench_common.run(): same models, init,
optimizer and learning rate, a throw-away warm-up model, host batches in the same seeded order
moved to the device every step, the loss read back every step (a host sync, as xpnet's step
does), the median epoch reported. So the first-run costs (cuDNN autotuning, CuPy's kernel
compilation) fall in the warm-up for both, and the figures compare directly.

    python3 benchmarks/torch_cuda_reference.py --model cnn --batch-size 100 --json \\
        --data-dir DATA/mnist [--device cuda:0 | cpu]

bench_common comes from ../shared/bench next to the checkout, or XPNET_SHARED_BENCH, or the copy
in benchmarks/bench_protocol/ (a GPU box often has only the checkout).
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_SHARED = HERE.parents[1] / "shared" / "bench"
SHARED_BENCH = Path(os.environ.get("XPNET_SHARED_BENCH") or (
    _SHARED if (_SHARED / "bench_common.py").is_file() else HERE / "bench_protocol"))
sys.path.insert(0, str(SHARED_BENCH))

import bench_common as bc  # noqa: E402


def main():
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda",
                        help="torch device (default cuda; cpu for the CPU self-test)")
    args = bc.parse_args(parser)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)
    data = bc.load_mnist(args.data_dir, flatten=args.model == "mlp", dtype="float32",
                         train_limit=args.train_limit)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def build():
        torch.manual_seed(args.seed)
        if args.model == "cnn":
            net = nn.Sequential(nn.Conv2d(1, 30, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                                nn.Linear(30 * 12 * 12, 100), nn.ReLU(), nn.Linear(100, 10))
        else:
            net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        net = net.to(dev)
        opt_cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD
        return net, opt_cls(net.parameters(), lr=args.lr)

    def step(state, xb, yb):  # the same shape of step as xpnet_bench.py's
        net, opt = state
        xb = torch.from_numpy(np.ascontiguousarray(xb)).to(dev)
        yb = torch.from_numpy(np.asarray(yb, dtype=np.int64)).to(dev)
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())  # host sync every step, as xpnet's float(loss)

    def evaluate(state, x, y):
        net = state[0]
        net.eval()
        try:
            with torch.inference_mode():
                acc = bc.batched_accuracy(
                    lambda xb: net(torch.from_numpy(xb).to(dev)).argmax(1).cpu().numpy(), x, y)
            sync()
            return acc
        finally:
            net.train()

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    info = dict(framework=f"torch-{dev.type}", version=torch.__version__, device=name,
                numpy=np.__version__, dtype="float32")
    bc.run(args, data, build, step, evaluate, info)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""xpnet under the reference protocol: MNIST SimpleConvNet / DeepConvNet / TwoLayerNet.

One training loop timed exactly like ../shared/bench/torch_reference.py (same CLI, data, seeds,
warm-up, timing and JSON, through the shared bench_common module), so the figures compare
directly.

    python benchmarks/xpnet_bench.py --model cnn --threads 2 --json [--backend numpy]
    python benchmarks/xpnet_bench.py --model deep --threads 2 --train-limit 6000 --json
"""
import os
import sys
from pathlib import Path

SHARED_BENCH = Path(os.environ.get("XPNET_SHARED_BENCH",
                                   Path(__file__).resolve().parents[2] / "shared" / "bench"))
sys.path.insert(0, str(SHARED_BENCH))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's xpnet

import bench_common as bc  # noqa: E402
import protocol  # noqa: E402  (benchmarks/protocol.py, beside this script)


def main():
    parser = bc.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy",
                        help="xpnet backend: numpy, torch, array_api_strict, cupy")
    parser.add_argument("--thread-policy", choices=["fixed", "adaptive"], default="fixed",
                        help="fixed: --threads for every library; adaptive: xpnet's default "
                             "(xpnet.threads.adapt_threads at model build, as Trainer.fit)")
    args = bc.parse_args(parser)  # sets the BLAS thread variables before NumPy loads
    protocol.prepare_this_process(args.threads)
    if args.thread_policy == "adaptive":  # no thread variables: xpnet's policy decides
        for var in ("XPNET_NUM_THREADS", *protocol.THREAD_VARIABLES):
            os.environ.pop(var, None)
    import numpy as np

    import xpnet
    import xpnet.threads
    from xpnet.models import DeepConvNet, SimpleConvNet, TwoLayerNet
    from xpnet.train import predict

    backend = xpnet.set_backend(args.backend)
    data = bc.load_mnist(args.data_dir, flatten=args.model == "mlp", dtype="float32",
                         train_limit=args.train_limit)
    if backend.name == "torch":
        import torch
        torch.set_num_threads(args.threads)
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)

    def build():
        if args.thread_policy == "adaptive":
            info["threads_chosen"] = xpnet.threads.adapt_threads()
        model = {"cnn": SimpleConvNet, "deep": DeepConvNet, "mlp": TwoLayerNet}[args.model](
            seed=args.seed)
        opt = (xpnet.Adam(model, lr=args.lr) if args.optimizer == "adam"
               else xpnet.SGD(model, lr=args.lr))
        return model, opt

    def step(state, xb, yb):
        model, opt = state
        xb, yb = xpnet.to_device(xb), xpnet.to_device(yb)
        loss = loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        return float(loss)

    def evaluate(state, x, y):
        model = state[0]  # predict: evaluation mode, under xpnet.no_grad (nothing cached)
        return bc.batched_accuracy(lambda xb: predict(model, xb, batch_size=len(xb)), x, y)

    info = dict(framework=f"xpnet-{backend.name}", version=xpnet.__version__,
                backend_version=backend.version, numpy=np.__version__, dtype="float32",
                protocol=protocol.runtime_info())
    bc.run(args, data, build, step, evaluate, info)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""PyTorch CUDA variant of ../shared/bench/torch_reference.py, for the GPU benchmarks.

Same models, init, optimizer and protocol (bench_common), but the model and the whole data set
live on the GPU, batches are gathered there, and the loss is read back only once per epoch.
The timed loop ends with torch.cuda.synchronize(), so epoch seconds are real GPU time.

    python benchmarks/torch_cuda_reference.py --model cnn --batch-size 100 --json
"""
import json
import os
import sys
import time
from pathlib import Path

SHARED_BENCH = Path(os.environ.get("XPNET_SHARED_BENCH",
                                   Path(__file__).resolve().parents[2] / "shared" / "bench"))
sys.path.insert(0, str(SHARED_BENCH))

import bench_common as bc  # noqa: E402


def main():
    args = bc.parse_args(bc.make_parser(__doc__.splitlines()[0]))
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    x_tr, y_tr, x_te, y_te = bc.load_mnist(args.data_dir, flatten=args.model == "mlp",
                                           train_limit=args.train_limit)
    gx, gy = torch.from_numpy(x_tr).to(dev), torch.from_numpy(y_tr).to(dev)

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

    def step(net, opt, xb, yb):
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    net, opt = build()
    for _ in range(args.warmup_steps):
        step(net, opt, gx[:args.batch_size], gy[:args.batch_size])
    torch.cuda.synchronize()
    net, opt = build()
    n, bs = len(x_tr), args.batch_size
    rng = np.random.default_rng(args.seed)
    epoch_s, accs, losses = [], [], []
    for _ in range(args.epochs):
        order = torch.from_numpy(rng.permutation(n)).to(dev)
        total, steps = torch.zeros((), device=dev), 0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in range(0, n - bs + 1, bs):
            idx = order[b:b + bs]
            total += step(net, opt, gx[idx], gy[idx])
            steps += 1
        torch.cuda.synchronize()
        epoch_s.append(time.perf_counter() - t0)
        losses.append(float(total) / steps)
        with torch.inference_mode():
            accs.append(bc.batched_accuracy(
                lambda xb: net(torch.from_numpy(xb).to(dev)).argmax(1).cpu().numpy(), x_te, y_te))
    images = (n // bs) * bs
    res = dict(framework="torch-cuda", version=torch.__version__,
               device=torch.cuda.get_device_name(),
               model=args.model, batch_size=bs, epochs=args.epochs, train_images=images,
               images_per_s=round(images / min(epoch_s), 1), epoch_seconds=round(min(epoch_s), 3),
               epoch_seconds_all=[round(t, 3) for t in epoch_s],
               test_accuracy=round(accs[-1], 4), train_loss_per_epoch=[round(v, 4) for v in losses])
    print(json.dumps(res))


if __name__ == "__main__":
    main()

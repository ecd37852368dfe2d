"""Batch normalisation: the same deep net with and without BatchNorm, across weight scales.

A 784-[100 x 5]-10 ReLU MultiLayerNet trained on 1000 MNIST images with SGD (lr 0.01, batches
of 100, 20 epochs), its weights initialised with a Gaussian of std 1, 0.27, 0.072, ...,
0.0001 (8 values, log-spaced), once plain and once with BatchNorm after every hidden Linear
layer (Ioffe & Szegedy 2015; "Deep Learning from Scratch", ch. 6.3).

Expected (seed 0): without BatchNorm only std 0.27 trains (test accuracy 0.53, while it fits
the 1000 images perfectly); std 1 overflows to NaN in the first epoch, 0.072 and below barely
learn (test accuracy 0.18, then 0.10). With BatchNorm every std from 1 (slowly: 0.35) down to
0.0014 trains, best at 0.019-0.0014 (test accuracy 0.87-0.89). Below about 4e-4 BatchNorm
stalls too: its ``eps`` (1e-5, PyTorch's default) is then larger than the variance it divides
by, so it no longer rescales the tiny pre-activations. The curves (every other std, to stay
legible) are the running training accuracy per epoch; the table adds the test accuracy on the
10,000 test images. About 6 s on NumPy.

    python examples/batchnorm.py --plot batchnorm.png
"""

from __future__ import annotations

import sys
import warnings

import common
import numpy as np

import xpnet
from xpnet.models import MultiLayerNet
from xpnet.plot import learning_curves
from xpnet.train import Trainer, TrainingDiverged


def train(trainer, x, y, epochs):
    """Train for ``epochs`` epochs (no per-epoch test). Returns False when the run diverged:
    with large initial weights and no BatchNorm the loss overflows to inf or NaN."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way to NaN
            trainer.fit(x, y, epochs)
    except TrainingDiverged as exc:
        common.log(f"  diverged: {exc}")
        return False
    return True


def evaluate(trainer, x, y):
    """(mean loss, accuracy) on host arrays, in evaluation mode (running statistics)."""
    scores = trainer.evaluate(x, y)  # {'loss': ..., 'acc': ...}
    return scores["loss"], scores["acc"]


@common.cli
def main(argv=None):
    parser = common.make_parser(__file__, __doc__, epochs=20, lr=0.01, batch_size=100,
                                train_limit=1000)
    parser.add_argument("--scales", type=common.positive_int, default=8, metavar="N",
                        help="number of initial weight stds, log-spaced from 1 to 1e-4 "
                             "(default: 8)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.epochs, args.scales = 1, 2

    backend = xpnet.set_backend(args.backend)
    common.log(f"backend: {backend}")
    x_train, y_train, x_test, y_test = common.load_mnist(args, flatten=True)

    rows, histories = [], {}
    for i, std in enumerate(np.logspace(0, -4, args.scales)):
        std = float(std)
        row = {"weight_std": std}
        for batchnorm in (False, True):
            kind = "batchnorm" if batchnorm else "plain"
            model = MultiLayerNet(784, [100] * 5, 10, activation="relu", init=std,
                                  batchnorm=batchnorm, seed=args.seed)
            optimizer = xpnet.SGD(model, lr=args.lr)
            trainer = Trainer(model, optimizer, batch_size=args.batch_size, seed=args.seed,
                              precision=args.precision)
            if train(trainer, x_train, y_train, args.epochs):
                _, test_accuracy = evaluate(trainer, x_test, y_test)
                train_accuracy = trainer.history.last["train_acc"]
                common.log(f"std {std:<9.3g} {kind:<9}  train accuracy {train_accuracy:.4f}  "
                           f"test accuracy {test_accuracy:.4f}")
            else:
                train_accuracy = test_accuracy = "diverged"
            if len(trainer.history) and i % 2 == 0:  # every other scale keeps the plot legible
                histories[f"std {std:.2g} {kind}"] = trainer.history
            row[f"{kind}_train_accuracy"] = train_accuracy
            row[f"{kind}_test_accuracy"] = test_accuracy
        rows.append(row)

    common.show(args, f"784-100x5-10 on {len(x_train)} images, SGD lr {args.lr:.4g}, "
                      f"{args.epochs} epochs\n" + common.table(
                          rows, {"weight_std": "weight std", "plain_train_accuracy": "plain train",
                                 "batchnorm_train_accuracy": "BN train",
                                 "plain_test_accuracy": "plain test",
                                 "batchnorm_test_accuracy": "BN test"}))
    if args.json:  # first: a failing figure must not lose the summary
        common.print_json({
            "example": "batchnorm", **common.backend_fields(backend), "epochs": args.epochs,
            "lr": args.lr, "train_images": len(x_train), "test_images": len(x_test),
            "table": rows, "histories": {k: h.records for k, h in histories.items()}})
    if args.plot:
        learning_curves(histories, args.plot, title="With and without BatchNorm")
        common.log(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Optimizers compared: SGD, Momentum, Nesterov, AdaGrad, RMSProp and Adam on MNIST.

The same 784-100-100-100-100-10 ReLU MultiLayerNet (He initialisation, one seed, so every run
starts from the same weights and sees the same batches) trained for 3 epochs with batches of
100, each optimizer at its customary learning rate: 0.01 for SGD, Momentum (0.9), Nesterov and
AdaGrad, 0.001 for RMSProp (0.99) and Adam (0.9, 0.999). ``--lr`` sets one rate for all.

Expected ("Deep Learning from Scratch", ch. 6.1): plain SGD lags far behind (test accuracy
about 0.93 after 3 epochs, training loss about 0.25); the momentum and adaptive methods reach
about 0.97 (loss about 0.08-0.11). About 15 s on NumPy.

    python examples/optimizers.py --plot optimizers.png
"""

from __future__ import annotations

import sys

import common

import xpnet
from xpnet.models import MultiLayerNet
from xpnet.plot import learning_curves
from xpnet.train import Trainer

# name -> (class, default learning rate), simplest first
OPTIMIZERS = {
    "SGD": (xpnet.SGD, 0.01),
    "Momentum": (xpnet.Momentum, 0.01),
    "Nesterov": (xpnet.Nesterov, 0.01),
    "AdaGrad": (xpnet.AdaGrad, 0.01),
    "RMSProp": (xpnet.RMSProp, 0.001),
    "Adam": (xpnet.Adam, 0.001),
}


def train(model, optimizer, data, epochs, batch_size, seed, precision="float32"):
    """Train with xpnet's Trainer, testing after every epoch; returns the Trainer."""
    x_train, y_train, x_test, y_test = data
    trainer = Trainer(model, optimizer, batch_size=batch_size, seed=seed, precision=precision)
    trainer.fit(x_train, y_train, epochs, x_test=x_test, y_test=y_test)
    return trainer


def evaluate(trainer, x, y):
    """(mean loss, accuracy) on host arrays, in evaluation mode."""
    scores = trainer.evaluate(x, y)  # {'loss': ..., 'acc': ...}
    return scores["loss"], scores["acc"]


@common.cli
def main(argv=None):
    parser = common.make_parser(
        __file__, __doc__, epochs=3, lr=None, batch_size=100,
        lr_help="one learning rate for every optimizer",
        lr_shown="0.01 for SGD, Momentum, Nesterov, AdaGrad; 0.001 for RMSProp, Adam")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), metavar="NAMES",
                        help="comma-separated subset to run "
                             "(default: SGD,Momentum,Nesterov,AdaGrad,RMSProp,Adam)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or not names:
        parser.error(f"--optimizers: unknown {unknown}; expected names from "
                     f"{', '.join(OPTIMIZERS)}")
    if args.dry_run:
        args.epochs = 1

    backend = xpnet.set_backend(args.backend)
    common.log(f"backend: {backend}")
    data = common.load_mnist(args, flatten=True)
    x_train, _, x_test, y_test = data

    rows, histories = [], {}
    for name in names:
        cls, default_lr = OPTIMIZERS[name]
        lr = args.lr if args.lr is not None else default_lr
        model = MultiLayerNet(784, [100] * 4, 10, activation="relu", init="he", seed=args.seed)
        optimizer = cls(model, lr=lr)
        with common.Stopwatch() as sw:
            trainer = train(model, optimizer, data, args.epochs, args.batch_size, args.seed,
                              args.precision)
        test_loss, test_accuracy = evaluate(trainer, x_test, y_test)
        common.log(f"{name:<9} lr {lr:<6g} test accuracy {test_accuracy:.4f}  "
                   f"{sw.seconds:.1f} s")
        histories[name] = trainer.history
        rows.append({"optimizer": name, "lr": lr, "train_loss": trainer.history.last["loss"],
                     "test_loss": test_loss, "test_accuracy": test_accuracy,
                     "seconds": sw.seconds})

    common.show(args, f"784-100x4-10, {args.epochs} epochs of {len(x_train)} images\n"
                      + common.table(rows, ["optimizer", "lr", "train_loss", "test_loss",
                                            "test_accuracy", "seconds"]))
    if args.json:  # first: a failing figure must not lose the summary
        common.print_json({
            "example": "optimizers", **common.backend_fields(backend), "epochs": args.epochs,
            "train_images": len(x_train), "test_images": len(x_test), "table": rows,
            "histories": {k: h.records for k, h in histories.items()}})
    if args.plot:
        learning_curves(histories, args.plot, title="Optimizers on MNIST, 784-100x4-10")
        common.log(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

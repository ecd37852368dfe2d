"""Overfitting and regularisation: a deep net on 300 MNIST images, with and without remedies.

A 784-[100 x 6]-10 ReLU MultiLayerNet (He initialisation, about 130,000 weights) memorises 300
training images: training accuracy reaches 1.0 within 30 epochs while test accuracy stalls
below 0.77. Five variants, same seed, same batches (SGD lr 0.05, batches of 100, 200 epochs):

- none: no regularisation;
- l2: weight decay 0.01 (penalty 0.5 * wd * sum(W**2), optimizer ``weight_decay=``);
- l1: L1 penalty 0.001 * sum(|W|) (optimizer ``l1=``);
- dropout: Dropout(0.2) after every hidden layer (off when evaluating);
- dropout+l2: both.

Expected test accuracy (10,000 test images, seed 0): none 0.766, l2 0.780, l1 0.780, dropout
0.792, dropout+l2 0.798; every variant still fits the 300 training images perfectly, so the
remedies buy generalisation, not a worse fit. The curves show how: without regularisation the
training loss is near zero by epoch 30 and the test loss then climbs (0.80 -> 1.09); L2 and L1
keep it falling (0.74 at the end); dropout slows training (training accuracy 0.66 at epoch 50)
and, alone, lets the test loss climb late. Stronger settings (the book's weight decay 0.1 at lr
0.01) close the train/test gap further but lower test accuracy too. Final accuracies are
measured in evaluation mode (dropout off); the training curves are the running accuracy during
each epoch (dropout on). About 30 s on NumPy, most of it testing on 10,000 images after each of
the 1000 epochs (``--test-limit 2000`` makes that faster). ("Deep Learning from Scratch",
ch. 6.4.)

    python examples/overfitting.py --plot overfitting.png
"""

from __future__ import annotations

import sys

import common

import xpnet
from xpnet.models import MultiLayerNet
from xpnet.plot import learning_curves
from xpnet.train import Trainer

EPOCHS, LR, WEIGHT_DECAY, L1, DROPOUT = 200, 0.05, 0.01, 0.001, 0.2


def variants(args):
    """name -> (dropout ratio, weight decay, l1) for each run."""
    return {
        "none": (0.0, 0.0, 0.0),
        "l2": (0.0, args.weight_decay, 0.0),
        "l1": (0.0, 0.0, args.l1),
        "dropout": (args.dropout, 0.0, 0.0),
        "dropout+l2": (args.dropout, args.weight_decay, 0.0),
    }


def train(model, optimizer, data, epochs, batch_size, seed, precision="float32"):
    """Train with xpnet's Trainer, testing after every epoch; returns the Trainer."""
    x_train, y_train, x_test, y_test = data
    trainer = Trainer(model, optimizer, batch_size=batch_size, seed=seed, precision=precision)
    trainer.fit(x_train, y_train, epochs, x_test=x_test, y_test=y_test)
    return trainer


def evaluate(trainer, x, y):
    """(mean loss, accuracy) on host arrays, in evaluation mode (dropout off)."""
    scores = trainer.evaluate(x, y)  # {'loss': ..., 'acc': ...}
    return scores["loss"], scores["acc"]


@common.cli
def main(argv=None):
    parser = common.make_parser(__file__, __doc__, epochs=EPOCHS, lr=LR, batch_size=100,
                                train_limit=300)
    parser.add_argument("--weight-decay", type=common.non_negative_float, default=WEIGHT_DECAY,
                        metavar="WD",
                        help=f"L2 strength of the l2 variants (default: {WEIGHT_DECAY})")
    parser.add_argument("--l1", type=common.non_negative_float, default=L1, metavar="L1",
                        help=f"L1 strength of the l1 variant (default: {L1})")
    parser.add_argument("--dropout", type=float, default=DROPOUT, metavar="P",
                        help=f"dropout ratio of the dropout variants (default: {DROPOUT})")
    parser.add_argument("--test-limit", type=common.positive_int, default=None, metavar="N",
                        help="test on the first N test images only (default: all 10000)")
    parser.add_argument("--variants", default="none,l2,l1,dropout,dropout+l2", metavar="NAMES",
                        help="comma-separated subset to run (default: none,l2,l1,dropout,"
                             "dropout+l2)")
    args = parser.parse_args(argv)
    runs = variants(args)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if not names or any(n not in runs for n in names):
        parser.error(f"--variants: expected names from {', '.join(runs)}, got {args.variants!r}")
    if args.dry_run:
        args.epochs = 2

    backend = xpnet.set_backend(args.backend)
    common.log(f"backend: {backend}")
    x_train, y_train, x_test, y_test = common.load_mnist(args, flatten=True)
    if args.test_limit:
        x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]
    data = x_train, y_train, x_test, y_test

    rows, histories = [], {}
    for name in names:
        dropout, weight_decay, l1 = runs[name]
        model = MultiLayerNet(784, [100] * 6, 10, activation="relu", init="he",
                              dropout=dropout, seed=args.seed)
        optimizer = xpnet.SGD(model, lr=args.lr, weight_decay=weight_decay, l1=l1)
        with common.Stopwatch() as sw:
            trainer = train(model, optimizer, data, args.epochs, args.batch_size, args.seed,
                              args.precision)
        _, train_accuracy = evaluate(trainer, x_train, y_train)
        _, test_accuracy = evaluate(trainer, x_test, y_test)
        common.log(f"{name:<11} train accuracy {train_accuracy:.4f}  test accuracy "
                   f"{test_accuracy:.4f}  {sw.seconds:.1f} s")
        histories[name] = trainer.history
        rows.append({"variant": name, "dropout": dropout, "weight_decay": weight_decay,
                     "l1": l1, "train_accuracy": train_accuracy,
                     "test_accuracy": test_accuracy, "gap": train_accuracy - test_accuracy,
                     "seconds": sw.seconds})

    common.show(args, f"784-100x6-10 on {len(x_train)} images, SGD lr {args.lr:.4g}, "
                      f"{args.epochs} epochs\n" + common.table(
                          rows, ["variant", "train_accuracy", "test_accuracy", "gap",
                                 "seconds"]))
    if args.json:  # first: a failing figure must not lose the summary
        common.print_json({
            "example": "overfitting", **common.backend_fields(backend), "epochs": args.epochs,
            "lr": args.lr, "train_images": len(x_train), "test_images": len(x_test),
            "results": {r["variant"]: r for r in rows},
            "histories": {k: h.records for k, h in histories.items()}})
    if args.plot:
        learning_curves(histories, args.plot, title=f"Overfitting {len(x_train)} images")
        common.log(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Moons: how many hidden units does a small classifier need? One tanh layer, 1 to 50 units.

Reproduces Denny Britz's "Implementing a neural network from scratch in Python" (2015): 200
points of two interleaving half-moons (noise 0.2), a net 2-H-2 with one tanh hidden layer of
H = 1, 2, 3, 4, 5, 20, 50 units, trained by full-batch gradient descent for 20,000 passes with
learning rate 0.01 and L2 regularisation 0.01, then a grid of decision boundaries. ``--dataset
circles`` does the same on two concentric circles (noise 0.1).

The tutorial's loss and gradients are sums over the N points; xpnet's loss is a mean. The same
update on the mean loss is SGD with lr = 0.01 * N and weight_decay = 0.01 / N (lr 2, weight decay
5e-5 for N = 200; N is the batch size with ``--batch-size``); the flags keep the tutorial's
numbers and the script converts them. Weights start Xavier-normal (the tutorial: normal with
std 1/sqrt(fan_in)).

Expected on moons (seed 0): H = 1 and 2 draw a straight line (training accuracy 0.86); H = 3
already follows the moons (0.96); H = 4 to 50 reach 0.97-0.975, larger H bending around a few
noisy points. On circles: 0.64 with one unit, 0.785 with two, 0.965 with three, 1.0 from five.
All 7 nets take about 14 s on numpy (about 100 us per full-batch pass) and about 2 min on
array_api_strict; ``--epochs 5000`` takes a quarter of that and draws nearly the same boundaries.

    python examples/moons.py --plot moons.png
    python examples/moons.py --dataset circles --hidden-sizes 1,2,3,5 --plot circles.png --json
"""

from __future__ import annotations

import functools
import sys

import common
import numpy as np
from array_api_compat import array_namespace

import xpnet
from xpnet.data import BatchLoader, circles, moons
from xpnet.models import MultiLayerNet
from xpnet.plot import decision_boundaries
from xpnet.train import predict


def l2_penalty(model, reg):
    """``0.5 * reg * sum(W**2)`` over the weight matrices (not biases): the regularisation loss
    whose gradient ``reg * W`` is what the optimizer's ``weight_decay=reg`` adds."""
    total = 0.0
    for p in model.parameters().values():
        if len(p.shape) >= 2:
            xp = array_namespace(p.data)
            total = total + 0.5 * reg * xp.sum(p.data * p.data)
    return total


def full_or_mini_batches(x, y, batch_size, seed):
    """The whole host set as one device batch (``batch_size`` 0), else shuffled mini-batches."""
    if batch_size == 0 or batch_size >= len(x):
        return [(xpnet.to_device(x), xpnet.to_device(y))]
    return BatchLoader(x, y, batch_size, rng=xpnet.Generator(seed))


def train(model, optimizer, batches, epochs):
    """Gradient descent: per batch forward, loss, backward, step (one batch: full batch)."""
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    for _ in range(epochs):
        for x, y in batches:
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            optimizer.step()


def evaluate(model, x, y, weight_decay):
    """(loss with the L2 term, i.e. the tutorial's loss / N, accuracy) on device arrays."""
    logits = model(x)
    loss = xpnet.SoftmaxCrossEntropy()(logits, y) + l2_penalty(model, weight_decay)
    predicted = xpnet.to_numpy(logits).argmax(axis=1)
    return float(loss), float(np.mean(predicted == xpnet.to_numpy(y)))


def hidden_sizes(text):
    """argparse type: '1,2,3' -> [1, 2, 3]."""
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise ValueError(text)
    return sizes


@common.cli
def main(argv=None):
    parser = common.make_parser(
        __file__, __doc__, epochs=20000, lr=0.01, batch_size=0, full_batch=True, mnist=False,
        epochs_help="passes over the points, per net",
        batch_help="points per step, 0 for full batch",
        lr_help="learning rate on the summed loss, as in the tutorial")
    parser.add_argument("--dataset", choices=("moons", "circles"), default="moons",
                        help="which 2-D toy set (default: moons)")
    parser.add_argument("--hidden-sizes", type=hidden_sizes, default=[1, 2, 3, 4, 5, 20, 50],
                        metavar="H,H,...", help="hidden layer sizes to compare, comma-separated "
                                                "(default: 1,2,3,4,5,20,50)")
    parser.add_argument("--reg", type=common.non_negative_float, default=0.01, metavar="R",
                        help="L2 regularisation on the summed loss, as in the tutorial "
                             "(default: 0.01)")
    parser.add_argument("--points", type=common.positive_int, default=200, metavar="N",
                        help="number of points (default: 200)")
    parser.add_argument("--noise", type=common.non_negative_float, default=None, metavar="S",
                        help="noise std (default: 0.2 for moons, 0.1 for circles)")
    args = parser.parse_args(argv)
    common.refuse_precision(parser, args)
    if args.dry_run:
        args.epochs = min(args.epochs, 200)

    backend = xpnet.set_backend(args.backend)
    common.log(f"backend: {backend}")

    make = moons if args.dataset == "moons" else circles
    noise = args.noise if args.noise is not None else (0.2 if args.dataset == "moons" else 0.1)
    x_host, y_host = make(args.points, noise=noise, seed=args.seed)
    batches = full_or_mini_batches(x_host, y_host, args.batch_size, args.seed)
    x, y = xpnet.to_device(x_host), xpnet.to_device(y_host)
    n = len(x_host)
    b = min(args.batch_size or n, n)  # points per step
    lr, weight_decay = args.lr * b, args.reg / b  # the tutorial's summed loss -> a mean loss

    rows, predictors = [], {}
    for h in args.hidden_sizes:
        model = MultiLayerNet(2, [h], 2, activation="tanh", init="xavier", seed=args.seed)
        optimizer = xpnet.SGD(model, lr=lr, weight_decay=weight_decay)
        with common.Stopwatch() as sw:
            train(model, optimizer, batches, args.epochs)
        loss, accuracy = evaluate(model, x, y, weight_decay)
        common.log(f"hidden {h:3d}: loss {loss:.4f}  accuracy {accuracy:.3f}  "
                   f"{sw.seconds:.1f} s")
        rows.append({"hidden": h, "loss": loss, "accuracy": accuracy, "seconds": sw.seconds})
        predictors[f"{h} hidden: accuracy {accuracy:.2f}"] = functools.partial(predict, model)

    common.show(args, f"{args.dataset}, {n} points, {args.epochs} passes\n"
                      + common.table(rows, ["hidden", "loss", "accuracy", "seconds"]))
    if args.json:  # first: a failing figure must not lose the summary
        common.print_json({
            "example": "moons", **common.backend_fields(backend), "dataset": args.dataset,
            "points": n, "noise": noise, "epochs": args.epochs, "lr": lr,
            "weight_decay": weight_decay,
            "results": {str(r["hidden"]): {k: r[k] for k in ("loss", "accuracy", "seconds")}
                        for r in rows},
            "seconds": sum(r["seconds"] for r in rows)})
    if args.plot:
        decision_boundaries(predictors, x_host, y_host, args.plot, columns=4)
        common.log(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Spiral: CS231n's "minimal neural network case study", with xpnet.

Reproduces https://cs231n.github.io/neural-networks-case-study/ : a three-arm spiral (K = 3
classes, N = 100 points each, noise 0.2), trained full batch by plain gradient descent with step
size 1 and L2 regularisation 1e-3, weights initialised with std 0.01:

(a) a softmax linear classifier, 200 iterations: CS231n reports 0.49 training accuracy (loss
    0.79); here, with seed 0's spiral, 0.53 (loss 0.75). No straight line separates spiral arms.
(b) a two-layer net 2-100-3 with ReLU, 10,000 iterations: CS231n 0.98 (loss 0.25); here 0.99
    (loss 0.24-0.25) on every backend.

CS231n adds 0.5 * reg * sum(W**2) to the loss, whose gradient is reg * W. xpnet's optimizers add
``weight_decay * W`` to the weight gradients (not to the biases, as in CS231n), so
``SGD(lr=1, weight_decay=1e-3)`` is the case study's update exactly. The losses shown include the
regularisation term, as CS231n's do. An epoch is one pass over the points: one iteration at
the default full batch (``--batch-size 0``).

    python examples/spiral.py                     # numpy: about 2 s
    python examples/spiral.py --backend torch --plot spiral.png --json
"""

from __future__ import annotations

import functools
import sys

import common
import numpy as np
from array_api_compat import array_namespace

import xpnet
from xpnet.data import BatchLoader, spiral
from xpnet.models import TwoLayerNet
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


def train(model, optimizer, batches, epochs, reg):
    """Gradient descent: per batch forward, loss, backward, step. Returns the last loss."""
    loss_fn = xpnet.SoftmaxCrossEntropy(check_range=False)
    log_interval = max(1, epochs // 10)
    for epoch in range(epochs):
        for x, y in batches:
            data_loss = loss_fn(model(x), y)  # forward: mean cross-entropy (a device scalar)
            model.backward(loss_fn.backward())  # backward: fills every parameter's .grad
            optimizer.step()  # update: W -= lr * (dW + reg * W)
        if epoch % log_interval == 0 or epoch == epochs - 1:
            # reading the loss syncs with the device, so only at the log interval
            loss = float(data_loss + l2_penalty(model, reg))
            common.log(f"  iteration {epoch:5d}: loss {loss:.4f}")
    return loss


def evaluate(model, x, y, reg):
    """(loss including the L2 term, accuracy) of ``model`` on the device arrays x, y."""
    logits = model(x)
    loss = xpnet.SoftmaxCrossEntropy()(logits, y) + l2_penalty(model, reg)
    predicted = xpnet.to_numpy(logits).argmax(axis=1)
    return float(loss), float(np.mean(predicted == xpnet.to_numpy(y)))


@common.cli
def main(argv=None):
    parser = common.make_parser(
        __file__, __doc__, epochs=10000, lr=1.0, batch_size=0, full_batch=True, mnist=False,
        epochs_help="epochs (full-batch iterations) of the two-layer net",
        batch_help="points per step, 0 for full batch")
    parser.add_argument("--linear-epochs", type=common.positive_int, default=200, metavar="N",
                        help="full-batch iterations of the linear classifier (default: 200)")
    parser.add_argument("--reg", type=common.non_negative_float, default=1e-3, metavar="R",
                        help="L2 regularisation strength, as weight decay (default: 0.001)")
    parser.add_argument("--points", type=common.positive_int, default=100, metavar="N",
                        help="points per class (default: 100)")
    args = parser.parse_args(argv)
    common.refuse_precision(parser, args)
    if args.dry_run:
        args.epochs, args.linear_epochs = min(args.epochs, 200), min(args.linear_epochs, 20)

    backend = xpnet.set_backend(args.backend)  # None reads XPNET_BACKEND
    common.log(f"backend: {backend}")

    x_host, y_host = spiral(args.points, 3, noise=0.2, seed=args.seed)
    batches = full_or_mini_batches(x_host, y_host, args.batch_size, args.seed)
    x, y = xpnet.to_device(x_host), xpnet.to_device(y_host)
    results = {}

    common.log(f"(a) softmax linear classifier, {args.linear_epochs} iterations")
    linear = xpnet.Linear(2, 3, init=0.01, rng=xpnet.Generator(args.seed))
    optimizer = xpnet.SGD(linear, lr=args.lr, weight_decay=args.reg)
    with common.Stopwatch() as sw:
        train(linear, optimizer, batches, args.linear_epochs, args.reg)
    results["linear"] = (*evaluate(linear, x, y, args.reg), sw.seconds)

    common.log(f"(b) two-layer net 2-100-3, {args.epochs} iterations")
    mlp = TwoLayerNet(2, 100, 3, init=0.01, seed=args.seed)
    optimizer = xpnet.SGD(mlp, lr=args.lr, weight_decay=args.reg)
    with common.Stopwatch() as sw:
        train(mlp, optimizer, batches, args.epochs, args.reg)
    results["mlp"] = (*evaluate(mlp, x, y, args.reg), sw.seconds)

    common.show(args, "\n".join(
        f"{name:>6}: training accuracy {acc:.2f}, loss {loss:.4f}, {secs:.2f} s"
        for name, (loss, acc, secs) in results.items()))
    if args.json:  # first: a failing figure must not lose the summary
        common.print_json({
            "example": "spiral", **common.backend_fields(backend),
            "linear_train_accuracy": results["linear"][1], "mlp_train_accuracy": results["mlp"][1],
            "linear_final_loss": results["linear"][0], "mlp_final_loss": results["mlp"][0],
            "linear_epochs": args.linear_epochs, "mlp_epochs": args.epochs,
            "linear_seconds": results["linear"][2], "mlp_seconds": results["mlp"][2]})
    if args.plot:
        decision_boundaries(
            {f"softmax linear: accuracy {results['linear'][1]:.2f}":
                functools.partial(predict, linear),
             f"2-100-3 ReLU net: accuracy {results['mlp'][1]:.2f}":
                functools.partial(predict, mlp)},
            x_host, y_host, args.plot, columns=2)
        common.log(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

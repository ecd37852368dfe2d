"""Vanishing gradients: sigmoid and ReLU nets under three weight initialisations, on MNIST.

A 784-40-20-10 MultiLayerNet with sigmoid or ReLU hidden units, initialised with a Gaussian of
std 0.01, Xavier (std sqrt(2 / (fan_in + fan_out))) or He (std sqrt(2 / fan_in)), trained with
plain SGD (lr 0.1, batches of 100) for 5 epochs. Before training, the script measures the
gradient norm of each layer's weights on one batch. Sigmoid with std 0.01 is the textbook case
of vanishing gradients: the first layer's gradient (0.00025) is 800 times smaller than the
last's (0.2), since each sigmoid layer passes back at most a quarter of the gradient and the
tiny weights shrink it further. With ReLU and std 0.01 all three are small (about 0.002) but
do not shrink with depth; Xavier and He keep them all between 0.15 and 1.7.

Test accuracy after 5 epochs (seed 0): sigmoid with std 0.01 does not learn at all (0.11, the
most frequent digit); sigmoid with Xavier or He 0.90; ReLU with std 0.01 starts slowly but
reaches 0.93; ReLU with Xavier or He 0.96. The six runs take about 15 s on NumPy. ("Deep
Learning from Scratch", ch. 6.2; Glorot & Bengio 2010; He et al. 2015.)

    python examples/vanishing_gradients.py --plot vanishing.png
"""

from __future__ import annotations

import math
import sys

import common
from array_api_compat import array_namespace

import xpnet
from xpnet.models import MultiLayerNet
from xpnet.plot import learning_curves
from xpnet.train import Trainer

ACTIVATIONS = ("sigmoid", "relu")
INITS = {"std 0.01": 0.01, "xavier": "xavier", "he": "he"}


def gradient_norms(model, x, y):
    """L2 norm of each weight matrix's gradient on one batch, first layer first."""
    loss_fn = xpnet.SoftmaxCrossEntropy()
    loss_fn(model(xpnet.to_device(x)), xpnet.to_device(y))
    model.backward(loss_fn.backward())
    norms = []
    for p in model.parameters().values():
        if len(p.shape) == 2:
            xp = array_namespace(p.grad)
            norms.append(float(xp.sqrt(xp.sum(p.grad * p.grad))))
    model.zero_grad()
    return norms


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
    parser = common.make_parser(__file__, __doc__, epochs=5, lr=0.1, batch_size=100)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.epochs = 1

    backend = xpnet.set_backend(args.backend)
    common.log(f"backend: {backend}")
    data = common.load_mnist(args, flatten=True)
    x_train, y_train, x_test, y_test = data

    rows, histories = [], {}
    for activation in ACTIVATIONS:
        for init_name, init in INITS.items():
            model = MultiLayerNet(784, [40, 20], 10, activation=activation, init=init,
                                  seed=args.seed)
            norms = gradient_norms(model, x_train[:100], y_train[:100])
            optimizer = xpnet.SGD(model, lr=args.lr)
            with common.Stopwatch() as sw:
                trainer = train(model, optimizer, data, args.epochs, args.batch_size, args.seed,
                              args.precision)
            test_loss, test_accuracy = evaluate(trainer, x_test, y_test)
            label = f"{activation}, {init_name}"
            common.log(f"{label:<18} test accuracy {test_accuracy:.4f}  {sw.seconds:.1f} s")
            histories[label] = trainer.history
            rows.append({
                "activation": activation, "init": init_name,
                "grad_layer1": norms[0], "grad_layer2": norms[1], "grad_layer3": norms[2],
                # log10 of first / last: how many orders of magnitude the gradient lost
                "grad_ratio_log10": math.log10(norms[0] / norms[-1]) if norms[0] else -math.inf,
                "train_loss": trainer.history.last["loss"], "test_loss": test_loss,
                "test_accuracy": test_accuracy, "seconds": sw.seconds})

    common.show(args, f"784-40-20-10, SGD lr {args.lr:.4g}, {args.epochs} epochs; gradient norms "
                      "per layer at initialisation\n" + common.table(
                          rows, ["activation", "init", "grad_layer1", "grad_layer2",
                                 "grad_layer3", "test_accuracy"]))
    if args.json:  # first: a failing figure must not lose the summary
        common.print_json({
            "example": "vanishing_gradients", **common.backend_fields(backend),
            "epochs": args.epochs, "lr": args.lr, "train_images": len(x_train),
            "test_images": len(x_test), "table": rows,
            "histories": {k: h.records for k, h in histories.items()}})
    if args.plot:
        learning_curves(histories, args.plot, title="784-40-20-10: activation x initialisation")
        common.log(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MNIST with a convolutional net: the textbook's SimpleConvNet (or DeepConvNet), trained with Adam.

SimpleConvNet is conv 30 filters 5x5 -> ReLU -> max-pool 2 -> Linear 100 -> ReLU -> Linear 10
("Deep Learning from Scratch", ch. 7), He-initialised. Adam with batches of 100; the learning
rate warms up linearly to 3e-3 over the first 10% of all steps, then follows a cosine down to 0
at the last step of ``--epochs``, updated after every step. Because the schedule spans the run,
``--epochs 1`` anneals within its one epoch: test accuracy 0.9873 (seeds 1 and 2: 0.9860,
0.9856), where a constant 1e-3 (the PyTorch reference's recipe) gives 0.980. The default 8
epochs give 0.9905 (seeds 1 and 2: 0.9912, 0.9910), at about 8 s per epoch on NumPy with 2 CPU
cores. L2 weight decay (``--weight-decay 5e-4``) ends 8 epochs at 0.9913 but lowers the
one-epoch run (0.9848-0.9871 over seeds 0-2), so it is off by default. ``--model deep`` trains
the book's DeepConvNet (six 3x3 convs, dropout) with the same recipe: 0.9944 after 8 epochs
(0.9908 after 5), 744 s of training at 645 images/s, about 12 times slower than SimpleConvNet on
a CPU.

``--checkpoint PATH`` saves model, optimizer, schedule, RNG states and history after every
epoch; ``--resume`` loads PATH first and continues to ``--epochs`` epochs in total, with exactly
the results of an uninterrupted run. Keep ``--epochs``, ``--batch-size`` and ``--warmup`` as
they were (the schedule depends on them; a checkpoint with another schedule is refused).
``--stop-after N`` ends a run early on purpose, e.g. to split it across sessions.

    python examples/mnist_cnn.py --data-dir ../shared/data
    python examples/mnist_cnn.py --checkpoint cnn.npz            # interrupted? then:
    python examples/mnist_cnn.py --checkpoint cnn.npz --resume   # goes on from the last epoch
    python examples/mnist_cnn.py --epochs 1 --json               # one annealed epoch
    python examples/mnist_cnn.py --backend cupy --json | tail -1 | python -m json.tool
"""

from __future__ import annotations

import sys

import common

from xpnet.models import DeepConvNet, SimpleConvNet

MODELS = {"simple": SimpleConvNet, "deep": DeepConvNet}


def train(trainer, data, epochs):
    """Train until ``epochs`` epochs are done in total, testing after each one.

    The Trainer runs forward, loss, backward and step per batch, prints one line per epoch to
    stderr and, when it has a checkpoint path, saves after every epoch.
    """
    x_train, y_train, x_test, y_test = data
    return trainer.fit(x_train, y_train, epochs, x_test=x_test, y_test=y_test)


def evaluate(trainer, x, y):
    """(mean loss, accuracy) on host arrays, in evaluation mode (dropout off)."""
    scores = trainer.evaluate(x, y)  # {'loss': ..., 'acc': ...}
    return scores["loss"], scores["acc"]


@common.cli
def main(argv=None):
    parser = common.make_parser(__file__, __doc__, epochs=8, lr=3e-3, batch_size=100)
    parser.add_argument("--model", choices=sorted(MODELS), default="simple",
                        help="SimpleConvNet or the deeper DeepConvNet (default: simple)")
    common.add_trainer_flags(parser, weight_decay=0.0, warmup=0.1)
    args = parser.parse_args(argv)
    common.check_positive(parser, args, "epochs", "batch_size", "train_limit", "stop_after")
    common.check_resume(parser, args)
    if args.dry_run:
        args.epochs = 1

    backend = common.set_backend(args.backend)  # None reads XPNET_BACKEND
    common.log(f"backend: {backend}")
    data = common.load_mnist(args, flatten=False)  # images (N, 1, 28, 28) in [0, 1]
    _, _, x_test, y_test = data

    model = MODELS[args.model](seed=args.seed)
    common.log(f"{type(model).__name__}: {model.num_parameters():,} parameters")
    trainer, resumed_at = common.make_trainer(args, model, len(data[0]))

    history = train(trainer, data, common.last_epoch(args, trainer))
    test = evaluate(trainer, x_test, y_test)
    common.report_mnist_run(args, backend, history, data, test, example="mnist_cnn",
                            model=args.model, label=type(model).__name__, resumed_at=resumed_at)
    return 0


if __name__ == "__main__":
    sys.exit(main())

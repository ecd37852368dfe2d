"""Shared helpers of the layer tests: seeded inputs, the float64 gradient check, and loop
references for convolution and pooling (also used by test_properties.py)."""

from __future__ import annotations

import numpy as np
from conftest import assert_gradients_close, dev, to_np

from xpnet.gradcheck import check_module

X_SHAPE = (2, 2, 5, 6)  # H != W catches swapped axes


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def away_from_zero(shape, seed=0):
    """Random values with |v| >= 0.1, so kinks (ReLU) are far from the finite differences."""
    r = rand(shape, seed)
    return np.sign(r) * (0.1 + np.abs(r))


def distinct(shape, seed=0):
    """Values 0.1 apart in random order: no ties in any max-pooling window."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n) * 0.1 - n * 0.05).reshape(shape)


def gradcheck(module, x_host, expected_keys, **kw):
    """Float64 central differences against ``module``'s backward, for x and every parameter."""
    results = check_module(module, dev(x_host), **kw)
    assert_gradients_close(results, expected_keys)
    return results


def assert_param_grads_without_input_grad(module, x, dout, rtol):
    """``backward(dout, input_grad=False)`` returns None and gives the same parameter
    gradients as a full backward; returns the full backward's input gradient."""
    module(x)
    dx = module.backward(dout)
    assert dx is not None
    full = {n: to_np(p.grad).copy() for n, p in module.parameters().items()}
    module.zero_grad()
    module(x)
    assert module.backward(dout, input_grad=False) is None
    for n, p in module.parameters().items():
        np.testing.assert_allclose(to_np(p.grad), full[n], rtol=rtol, err_msg=n)
    return dx


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def pad(x, p, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=value)


# ---------------------------------------------------------------------- loop references
def ref_conv(x, w, b, s, p):
    n, c, h, wd = x.shape
    f, _, k, _ = w.shape
    xp_ = pad(x, p)
    oh, ow = out_size(h, k, s, p), out_size(wd, k, s, p)
    out = np.zeros((n, f, oh, ow))
    for i_n in range(n):
        for i_f in range(f):
            for i in range(oh):
                for j in range(ow):
                    acc = b[i_f]
                    for i_c in range(c):
                        for a in range(k):
                            for bb in range(k):
                                acc += xp_[i_n, i_c, i * s + a, j * s + bb] * w[i_f, i_c, a, bb]
                    out[i_n, i_f, i, j] = acc
    return out


def ref_pool(x, k, s, p, kind):
    n, c, h, w = x.shape
    xp_ = pad(x, p, -np.inf if kind == "max" else 0.0)
    oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            win = xp_[:, :, i * s:i * s + k, j * s:j * s + k]
            out[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.sum(axis=(2, 3)) / k**2
    return out


def ref_maxpool_backward(x, dout, k, s, p):
    """Each window's gradient goes to its first maximum in row-major order (PyTorch's rule)."""
    n, c, h, w = x.shape
    xp_ = pad(x, p, -np.inf)
    dx = np.zeros_like(xp_)
    for b in range(n):
        for ch in range(c):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    win = xp_[b, ch, i * s:i * s + k, j * s:j * s + k]
                    a, bb = np.unravel_index(np.argmax(win), win.shape)
                    dx[b, ch, i * s + a, j * s + bb] += dout[b, ch, i, j]
    return dx[:, :, p:p + h, p:p + w]

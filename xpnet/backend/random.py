"""Device random kernels: uniform [0, 1) numbers drawn on the device from an integer seed.

:func:`xpnet.rng.device_uniform` dispatches here and falls back to a host NumPy draw for a
library without a kernel in :data:`UNIFORM`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["UNIFORM"]

_TORCH_GENERATORS: dict[Any, Any] = {}


def _uniform_torch(xp: Any, seed: int, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    import torch

    gen = _TORCH_GENERATORS.get(device)
    if gen is None:
        gen = _TORCH_GENERATORS[device] = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=dtype, device=device)


_CUPY_STATES: dict[Any, Any] = {}


def _uniform_cupy(xp: Any, seed: int, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    import cupy

    with device:
        state = _CUPY_STATES.get(device.id)
        if state is None:
            # Philox4x32-10 is counter-based: a new seed is a new key, set on the host. CuPy's
            # default XORWOW re-runs its state set-up kernel after every seed().
            state = _CUPY_STATES[device.id] = cupy.random.RandomState(
                seed, method=cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10)
        state.seed(seed)
        if np.dtype(dtype).char in "fd":
            return state.random_sample(shape, dtype=dtype)
        # cuRAND draws float32/float64 only (random_sample raises TypeError for float16)
        return state.random_sample(shape, dtype=cupy.float32).astype(dtype)


#: fast-path kind (see :func:`xpnet.ops.fast_path_kind`) -> kernel(xp, seed, shape, dtype, device)
UNIFORM: dict[str, Callable[..., Any]] = {"torch": _uniform_torch, "cupy": _uniform_cupy}

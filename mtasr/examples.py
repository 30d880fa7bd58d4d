"""Example inputs of a graph built from its spec (numpy only): the exporter's trace inputs, benches' and checks' feeds.

Shapes come from `TensorSpec.resolve` with the named dynamic axes given; float inputs are random, integer inputs
(lengths, tokens) take the values given.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from mtasr.spec import EncoderInputs, GraphSpec

# Inputs holding speaker activity (probabilities in [0, 1]) rather than features or states.
_EI = EncoderInputs.tensor_names()
ACTIVITY_INPUTS = (_EI.spk_targets, _EI.bg_spk_targets)


def example_feed(spec: GraphSpec, sizes: Mapping[str, int], ints: Mapping[str, int | Sequence[int]],
                 rng: np.random.Generator | int = 0, unit: Collection[str] = ACTIVITY_INPUTS) -> dict[str, np.ndarray]:
    """Inputs of `spec` in its order: dynamic axes from `sizes`; float tensors standard normal (those named in `unit`
    uniform in [0, 1)); each integer tensor from `ints` (one value for every element, or one per row).

    ValueError when a dynamic axis or an integer input has no value.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    feed: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        missing = [d for d in t.dynamic_axes.values() if d not in sizes]
        if missing:
            raise ValueError(f"{spec.name}.{t.name}: no size for dynamic axis {missing[0]!r}")
        shape = t.resolve(**sizes)
        if np.issubdtype(t.dtype, np.integer):
            if t.name not in ints:
                raise ValueError(f"{spec.name}: no value for integer input {t.name!r}")
            feed[t.name] = np.broadcast_to(np.asarray(ints[t.name], dtype=t.dtype), shape).copy()
        else:
            values = rng.random(shape) if t.name in unit else rng.standard_normal(shape)
            feed[t.name] = values.astype(t.dtype)
    return feed

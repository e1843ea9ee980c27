"""Named random streams derived from the recipe's one seed, and their checkpointable state.

Initialisation, shuffling, augmentation and dropout each draw from their own stream, so
adding an augmentation does not change the initial weights or the batch order, and a
resumed run continues every stream exactly where the checkpoint left it. Each stream is
a NumPy Generator seeded by SeedSequence(seed, spawn_key=(crc32(name),)): stable across
processes and Python versions (unlike hash()), and independent of creation order.

    streams = Streams(seed=0)
    order = streams["shuffle"].permutation(n)
    state = streams.state()                  # JSON-able, goes into state.json
    streams = Streams.restore(0, state)      # same future draws
"""
from __future__ import annotations

import zlib

import numpy as np

# Bit generators a saved state may name; a fixed list so a file cannot pick arbitrary attributes.
_BIT_GENERATORS = {c.__name__: c for c in (np.random.PCG64, np.random.PCG64DXSM, np.random.Philox,
                                           np.random.SFC64, np.random.MT19937)}


def stream(seed: int, name: str) -> np.random.Generator:
    """The Generator of stream `name` for `seed`, at its start."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),))))


class Streams:
    """Lazily created named streams of one seed; `state()` and `restore()` round-trip them."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._streams: dict[str, np.random.Generator] = {}

    def __getitem__(self, name: str) -> np.random.Generator:
        if name not in self._streams:
            self._streams[name] = stream(self.seed, name)
        return self._streams[name]

    def state(self) -> dict:
        """{name: bit_generator.state} of every stream used so far; plain JSON (ints, strings)."""
        return {name: g.bit_generator.state for name, g in self._streams.items()}

    @classmethod
    def restore(cls, seed: int, state: dict) -> "Streams":
        """Streams of `seed` whose named streams continue from a saved `state()`."""
        out = cls(seed)
        for name, saved in state.items():
            kind = _BIT_GENERATORS.get(saved.get("bit_generator"))
            if kind is None:
                raise ValueError(f"random stream '{name}': unknown bit generator {saved.get('bit_generator')!r}")
            bits = kind()
            bits.state = saved
            out._streams[name] = np.random.Generator(bits)
        return out

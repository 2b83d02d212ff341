"""Infinite, seeded, stateless batch samplers: the batch of any step is a pure function of (seed, step).

Positions p = 0, 1, 2, … of an endless stream map to epoch p // N and slot p % N of that epoch's permutation
(seeded by seed and epoch). Micro-batch i of the run covers a contiguous block of the stream and each process
takes its own slice, so a resumed run or a run on more processes sees exactly the same global batches.
"""

from __future__ import annotations

import numpy as np
import torch


class InfiniteSampler:
    def __init__(self, size: int, seed: int) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty set")
        self.size = size
        self.seed = seed
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 4:
                self._permutations.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._permutations[epoch] = rng.permutation(self.size)
        return self._permutations[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Dataset indices at stream positions [start, start + count)."""
        positions = np.arange(start, start + count)
        epochs, slots = np.divmod(positions, self.size)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._permutation(int(epoch))[slots[mask]]
        return torch.from_numpy(out)

    def micro_batch(self, index: int, global_size: int, *, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """This process's share of global micro-batch `index` (of `global_size` samples)."""
        local = global_size // world_size
        return self.indices(index * global_size + rank * local, local)


def seed_for(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from (seed, *keys): independent streams per step, micro-batch and rank."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def generator_for(seed: int, *keys: int) -> torch.Generator:
    """A torch generator seeded from (seed, *keys)."""
    return torch.Generator().manual_seed(seed_for(seed, *keys))

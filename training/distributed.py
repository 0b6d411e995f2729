"""The process group of a DDP run (torchrun, gloo) and the seeds derived per process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Distributed:
    """Process group facts: ``rank`` of ``world_size`` (1 = a plain single process)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def setup_distributed() -> Distributed:
    """Join the torchrun process group (gloo) when ``WORLD_SIZE`` > 1, else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="gloo")
    return Distributed(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size())


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, rank, stream) by NumPy's SeedSequence."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))


#: A plain single process (the default everywhere).
SINGLE_PROCESS = Distributed()

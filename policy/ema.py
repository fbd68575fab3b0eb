"""An exponential moving average of a model's weights (``robotok-train --ema``), kept beside the parameters with
their sharding, so that one object serves one process, DDP and FSDP2 alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """The average of ``module``'s parameters, decay warmed up as min(decay, (1 + step) / (10 + step)) so that the
    early averages do not drag in the random initialisation."""

    def __init__(
        self,
        module: torch.nn.Module,
        decay: float,
        full: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Start from the module's weights, or from ``full`` (a resumed average, unsharded, by parameter name)."""
        self.module, self.decay = module, decay
        self.values: list[torch.Tensor] = []
        with torch.no_grad():
            for name, p in module.named_parameters():
                e = p.detach().clone()
                if full is not None:
                    src = full[name].to(p.device)
                    if hasattr(p, "device_mesh"):  # an FSDP2 shard: take this rank's part
                        from torch.distributed.tensor import distribute_tensor

                        src = distribute_tensor(src, p.device_mesh, p.placements)
                    e.copy_(src)
                self.values.append(e)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (0-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.values, self.module.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def _swap(self) -> None:
        from torch.distributed.fsdp import FSDPModule

        for m in self.module.modules():  # a forward without backward leaves an FSDP2 root's parameters gathered
            if isinstance(m, FSDPModule):
                m.reshard()
        for e, p in zip(self.values, self.module.parameters(), strict=True):
            tmp = p.detach().clone()
            p.copy_(e)
            e.copy_(tmp)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The module holds the average inside the block and its training weights again after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

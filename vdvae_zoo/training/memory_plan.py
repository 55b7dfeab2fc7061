"""The memory plan of a training run: the estimated peak of one step (compute.memory.training_memory) against
what the device has free, checked before the run folder is written. A run that will not fit is refused with the
options that fit it (`MemoryPlanRefused`); `ignore_memory_plan` trains anyway, with a warning, since the estimate
can be wrong (README, "Fine-tuning" states its measured error band)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compute.memory import TrainingMemory, available_memory, fitting_advice, gib, training_memory
from ..config import VDVAEConfig

__all__ = ["RunMemory", "MemoryPlanRefused"]


class MemoryPlanRefused(MemoryError):
    """The memory plan says one step will not fit: the message names the numbers and the options that fit."""


@dataclass
class RunMemory:
    """What one step of a run needs: its config, parameter count, micro-batch, images per update (per process),
    checkpointing, dtype and device."""

    config: VDVAEConfig
    parameters: int
    batch_size: int
    images_per_update: int
    grad_checkpoint: bool
    dtype: str
    device: torch.device

    def plan(
        self, batch_size: int | None = None, grad_checkpoint: bool | None = None, dtype: str | None = None
    ) -> TrainingMemory:
        """memory.training_memory for this run (or for another micro-batch size / checkpointing / dtype)."""
        batch_size = self.batch_size if batch_size is None else batch_size
        return training_memory(
            self.config,
            self.parameters,
            batch_size,
            grad_checkpoint=self.grad_checkpoint if grad_checkpoint is None else grad_checkpoint,
            dtype=self.dtype if dtype is None else dtype,
            device_type=self.device.type,
            accumulating=self.images_per_update > batch_size,
        )

    def advice(self, available: float | None = None) -> str:
        """What makes a step fit in `available` bytes (default: what the device has free now): memory.fitting_advice."""
        available = available_memory(self.device) if available is None else available
        return fitting_advice(
            self.plan, available, self.batch_size, self.images_per_update, self.grad_checkpoint, self.dtype
        )

    def check(self) -> tuple[str, str | None]:
        """The plan as a line to print, and what is wrong when the estimated peak exceeds the memory free on the
        device now (None when it fits or nothing is known)."""
        plan, available = self.plan(), available_memory(self.device)
        line = f"memory plan: {plan.describe()}" + (f"; {gib(available)} free" if available else "")
        if available is None or plan.total <= available:
            return line, None
        return line, (
            f"one step needs {gib(plan.total)} by the estimate, more than the {gib(available)} free on "
            f"{self.device}; to fit: {self.advice(available)}"
        )

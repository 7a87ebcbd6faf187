"""Training state on disk, so that a run can be continued exactly (`hexnode train --resume`) and a
campaign can add each run's hours to the last (`--init-from`).

A loop checkpoint holds everything its next step depends on: the weights, the optimiser's moments,
the step count and time spent (the learning-rate schedule reads them), the numpy sampler's and
torch's RNG states, and the loss average. With a step budget a resumed loop therefore ends with
the same weights, bit for bit, as one that was never stopped (test); with a time budget it goes
on with the schedule where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class LoopState:
    step: int
    spent_seconds: float
    ema: float | None
    model: dict[str, Any]
    optimiser: dict[str, Any]
    sampler: dict[str, Any]  # numpy Generator.bit_generator.state
    torch_rng: torch.Tensor
    done: bool = False


def save(path: Path, state: LoopState) -> None:
    """Atomically: a kill during the write leaves the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state.__dict__, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path | None) -> LoopState | None:
    if path is None or not path.exists():
        return None
    # weights_only: the file holds tensors, dicts and numbers only, never code
    return LoopState(**torch.load(path, weights_only=True))


def snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator, *, step: int,
             spent_seconds: float, ema: float | None, done: bool = False) -> LoopState:
    return LoopState(step=step, spent_seconds=spent_seconds, ema=ema, model=model.state_dict(),
                     optimiser=opt.state_dict(), sampler=dict(rng.bit_generator.state), torch_rng=torch.get_rng_state(),
                     done=done)


def restore(state: LoopState, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator) -> None:
    model.load_state_dict(state.model)
    opt.load_state_dict(state.optimiser)
    rng.bit_generator.state = state.sampler
    torch.set_rng_state(state.torch_rng)


def resume(path: Path | None, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: np.random.Generator,
           log: Any, name: str) -> LoopState | None:
    """Restore a loop from `path` when it holds a checkpoint (the loop then goes on from its step
    and time spent, or stops at once when it is `done`); None: start from step 0."""
    saved = load(path)
    if saved is not None:
        restore(saved, model, opt, rng)
        log.info("%s: continuing from %s at step %d (%.0f s trained)", name, path, saved.step, saved.spent_seconds)
    return saved


@dataclass
class Every:
    """When to write a checkpoint: every `steps` steps (tests) or every `seconds` of training."""

    seconds: float = 300.0
    steps: int = 0
    _last_spent: float = 0.0

    def due(self, step: int, spent: float) -> bool:
        if self.steps > 0:
            return step % self.steps == 0
        if spent - self._last_spent >= self.seconds:
            self._last_spent = spent
            return True
        return False

"""How long a training loop runs: a wall-clock budget, or a fixed number of steps.

A time budget uses whatever the machine gives (the production campaigns); a step budget gives the
same model on every machine however loaded it is (`--quick`, whose tests must not depend on how
busy the CI machine is).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Budget:
    seconds: float = 0.0
    steps: int = 0  # > 0: exactly this many steps, whatever the time
    spent_before: float = 0.0  # seconds a resumed loop had already trained
    _t0: float = field(default_factory=time.monotonic)

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self._t0

    def fraction(self, step: int) -> float | None:
        """Progress in [0, 1) before `step`, for the learning-rate schedule; None when spent."""
        frac = step / self.steps if self.steps > 0 else self.spent() / max(self.seconds, 1e-9)
        return None if frac >= 1.0 else frac

"""What one training step computes and how: one frozen value, passed from the run config (``train.step``) to the
:class:`~sim.schedule.Scheduler` and from there down to the phases, rules and layers that read it.

Nothing else changes a step: there are no process-wide switches. A run, ``python -m sim bench`` and
``python -m sim angles`` all build their scheduler from a :class:`StepOptions`, so any benchmarked step is the step a
run with the same ``train.step`` section takes. The values are archived with the resolved config (the store's
``config`` attribute). Measured costs of each option: docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sim.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: the numerics-check modes (``True`` is accepted for 'tensor', ``False`` for 'off')
NUMERICS_CHECKS = ("tensor", "step", "off")


@dataclass(frozen=True)
class StepOptions:
    """Options of one training step. Every field but ``ortho_every`` leaves the values unchanged up to float
    rounding (most bit for bit); ``ortho_every > 1`` trades fidelity for speed."""

    check_numerics: str = "tensor"
    """Stop with a :class:`~sim.errors.NonFiniteError` naming step, layer and quantity at the first NaN/Inf (and with a
    :class:`~sim.errors.SingularLayerError` at a badly conditioned square layer). ``'tensor'`` (or ``True``): check
    each tensor as it is made (one host sync per tensor); ``'step'``: one on-device flag per step, read once, the step
    repeated with per-tensor checks if it is set (same errors, one sync per step); ``'off'`` (or ``False``): no
    checks and no host-device sync inside a step (the training loop still checks the losses once per epoch)."""
    skip_aux: bool = True
    """Run a square layer on its forwarded units only where that changes nothing but float rounding: its rule says
    so (GP/vGP in difference form) and it gets no message noise. ``False`` computes every aux unit, for inspecting
    them; the updates are the same."""
    ortho_every: int = 1
    """Apply the orthogonality regulariser only at every k-th step (steps 0, k, 2k, ...) with k times its weight.
    1, the default, is the reference; larger values save most of the regulariser's cost at some fidelity."""
    fused_adam: bool = True
    """Take the Adam step with torch's fused kernel (the same algorithm, rounded differently in the last bit);
    ``False`` uses torch's for-loop (CPU) or foreach (CUDA) Adam."""
    symmetric_gram: bool = True
    """Build the regulariser's ``W W^T`` from its upper block triangle for ``n >= 512`` (``1.25 n^3`` flops instead
    of ``2 n^3``; :func:`sim.regularizer.gram`). ``False`` is one full matmul, as the authors' implementation
    computes it (the benchmark's reference-cost mode). Equal up to rounding."""
    compile_nudge: bool = False
    """``torch.compile`` GP's elementwise nudge (:func:`sim.rules.gait.nudge`) into one kernel. The values are those
    of the eager code; compiling costs about a minute on a small CPU, once per activation shape."""

    def __post_init__(self) -> None:
        modes = {True: "tensor", False: "off", **{m: m for m in NUMERICS_CHECKS}}
        mode = self.check_numerics
        if not isinstance(mode, (bool, str)) or mode not in modes:
            raise ConfigError(f"check_numerics must be True, False or one of {NUMERICS_CHECKS}, got {mode!r}")
        object.__setattr__(self, "check_numerics", modes[mode])
        every = self.ortho_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"ortho_every must be a positive integer (1: every step), got {every!r}")
        for name in ("skip_aux", "fused_adam", "symmetric_gram", "compile_nudge"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def checks(self) -> bool:
        """Whether steps check for NaN/Inf at all (``check_numerics`` is not 'off')."""
        return self.check_numerics != "off"


#: the defaults: what a step computes when no options are given
DEFAULT_STEP = StepOptions()


@dataclass(frozen=True)
class BatchPart:
    """This process's rows ``start:stop`` of a global batch of ``total`` samples: what a process of a data-parallel
    run (:mod:`sim.distributed`) computes the local phases of a step on, ``torch.tensor_split``'s part of the batch.

    Not an option of the step (the step is the same; only who computes which rows differs) and not part of the
    config: a run resumed with another number of processes is the same run. Passed next to the batch, to the
    scheduler's draws and to the rules that draw random numbers per sample (:meth:`randn`)."""

    start: int
    """First row of the part in the global batch."""
    stop: int
    """One past its last row."""
    total: int
    """Samples in the global batch (``B``; the last batch of an epoch may be shorter than ``train.batch_size``)."""

    def randn(self, shape: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
        """Rows ``start:stop`` of ``torch.randn((total, *shape[1:]))`` drawn from ``generator``: the draw is made for
        the whole batch, so every process draws what the single-process step draws, gets its own rows of it, and
        leaves ``generator`` in the single-process step's state."""
        import torch

        full = torch.randn((self.total, *shape[1:]), generator=generator, dtype=dtype, device=device)
        return full[self.start:self.stop]


def randn(shape: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype, device: torch.device,
          part: BatchPart | None = None) -> torch.Tensor:
    """Standard normal numbers of a per-sample ``shape`` ``[B, ...]``: ``torch.randn`` for a whole batch, or with
    ``part`` the part's rows of the whole batch's draw (:meth:`BatchPart.randn`)."""
    if part is None:
        import torch

        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return part.randn(shape, generator=generator, dtype=dtype, device=device)

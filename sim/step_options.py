"""What one training step computes and how: one frozen value, passed from the run config (``train.step``) to the
:class:`~sim.schedule.Scheduler` and from there down to the phases, rules and layers that read it.

Nothing else changes a step: there are no process-wide switches. A run, ``python -m sim bench`` and
``python -m sim angles`` all build their scheduler from a :class:`StepOptions`, so any benchmarked step is the step a
run with the same ``train.step`` section takes. The values are archived with the resolved config (the store's
``config`` attribute). Measured costs of each option: docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import ConfigError

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

"""What a run writes into its archive, and when (docs/runs.md, "Archive").

Per step: the loss (mean over the batch), the batch size and, at the measured steps, the angle to BP per layer. These
stay in per-epoch buffers allocated once (the losses on the device, so a step costs no host sync) and reach the
archive once per epoch, or up to the failing step when a run stops. Per epoch: accuracy and loss on both splits, the
wall time and the square layers' orthogonality errors. At ``record.probe_epochs``: the probe batch's activities and
targets. Nothing is visible to readers before :meth:`Recorder.commit`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sim import metrics
from sim.archive import RunArchive
from sim.network import Network


class Recorder:
    """The per-epoch buffers of one run and the archive they go to.

    Args:
        archive: the run's open store; None on the processes of a data-parallel run other than rank 0, which
            record nothing (rank 0 writes): every method that writes returns at once.
        net: the network (device, dtype, depth; the probe runs through it).
        probe: the probe batch ``(x, y)`` or None.
        steps_per_epoch: the buffers' length.
        check_numerics: let the probe raise on a NaN/Inf (``train.step.check_numerics``).
    """

    def __init__(self, archive: RunArchive | None, net: Network, probe: tuple[torch.Tensor, torch.Tensor] | None,
                 steps_per_epoch: int, check_numerics: bool) -> None:
        self.archive, self.net, self.probe_batch, self.check = archive, net, probe, check_numerics
        n, depth = steps_per_epoch, len(net.layers)
        self.losses = torch.zeros(n, dtype=net.dtype, device=net.device)  # summed over the batch
        self.batch_sizes = np.zeros(n, dtype=np.int64)
        self.angles = np.full((n, depth), np.nan)
        self.last_angle = math.nan  # mean over layers of the last measured step, for the progress bar

    # ----- per step -----------------------------------------------------------------------------------------------
    def start_epoch(self) -> None:
        self.angles.fill(np.nan)

    def step(self, i: int, loss: torch.Tensor, batch_size: int, angle_deg=None) -> None:
        """Batch ``i`` of the epoch: its summed loss (a device-side copy, no host sync), size and angles if
        measured."""
        if angle_deg is not None:
            self.angles[i] = angle_deg
            self.last_angle = float(np.nanmean(angle_deg)) if any(map(math.isfinite, angle_deg)) else math.nan
        self.losses[i] = loss
        self.batch_sizes[i] = batch_size

    def loss(self, i: int) -> float:
        """The mean loss of batch ``i`` (one host sync)."""
        return self.losses[i].item() / int(self.batch_sizes[i])

    def first_nonfinite(self, start: int, end: int) -> int | None:
        """The first batch in ``start .. end-1`` with a non-finite loss, or None (one host sync)."""
        sums = self.losses[start:end]
        if bool(torch.isfinite(sums).all()):
            return None
        return start + int(torch.nonzero(~torch.isfinite(sums))[0, 0])

    def mean_angle(self, start: int, end: int) -> float:
        measured = self.angles[start:end]
        return float(np.nanmean(measured)) if np.isfinite(measured).any() else math.nan

    def flush_steps(self, epoch: int, start: int, end: int, step_count: int) -> None:
        """Append the steps of batches ``start .. end-1`` of ``epoch`` (the last one is step ``step_count - 1``)."""
        if end <= start or self.archive is None:
            return
        sums = self.losses[start:end].double().cpu().numpy()
        sizes = self.batch_sizes[start:end]
        self.archive.append_steps(first_step=step_count - (end - start), epoch=epoch, loss=sums / sizes,
                                  batch_size=sizes, angle=self.angles[start:end])

    # ----- per epoch ----------------------------------------------------------------------------------------------
    def probe(self, epoch: int, step_count: int) -> None:
        """Append the probe batch's activities and targets after ``epoch`` (0: before training)."""
        if self.probe_batch is None or self.archive is None:
            return
        acts, targets = metrics.probe(self.net, *self.probe_batch, step=step_count, check=self.check)
        self.archive.append_probe(epoch, step_count, [a.cpu().numpy() for a in acts],
                                  [t.cpu().numpy() for t in targets])

    def epoch(self, epoch: int, m_train: metrics.SplitMetrics, m_test: metrics.SplitMetrics, ortho: np.ndarray,
              wall_s: float, state: dict[str, np.ndarray] | None = None) -> None:
        """Append the epoch's metrics, orthogonality errors and the rules' learned-state metrics (``state``)."""
        if self.archive is None:
            return
        self.archive.append_epoch(epoch, {
            "train_top1": m_train.top1, "train_top5": m_train.top5, "test_top1": m_test.top1,
            "test_top5": m_test.top5, "train_loss": m_train.loss, "test_loss": m_test.loss, "epoch_wall_s": wall_s,
        }, ortho, state)

    def commit(self, **attrs) -> None:
        """Make everything appended visible to readers, and set ``attrs``."""
        if self.archive is None:
            return
        self.archive.commit(**attrs)

"""A stop signal that arrives while a checkpoint is being written waits until the write returns (issue 14, part 7).

torch's zip writer calls the file's ``write`` from C++; an exception raised there (the stop) became a short write
("unexpected pos ...") and the run ended as a failed checkpoint write (exit 2) instead of a clean stop (CI, stop 18).
Here the signal is sent from inside that ``write``, deterministically."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from sim import checkpoint as ckpt_io
from sim.commands.run import stop_on_signals
from sim.errors import Stopped
from tests.helpers import checkpoint_at


class _SignalOnFirstWrite:
    """A binary file that sends ``sig`` to this process from inside its first ``write`` (the C++ writer's call)."""

    def __init__(self, f, sig: int):
        self._f, self._sig, self.sent = f, sig, False

    def write(self, data):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self._sig)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_during_a_checkpoint_write_waits_for_the_write(tmp_path, monkeypatch, sig):
    opened: list[_SignalOnFirstWrite] = []
    fdopen = os.fdopen

    def signalling_fdopen(fd, *args, **kwargs):
        opened.append(_SignalOnFirstWrite(fdopen(fd, *args, **kwargs), sig))
        return opened[-1]

    monkeypatch.setattr(ckpt_io.os, "fdopen", signalling_fdopen)
    state = checkpoint_at(5)
    stopped = None
    with stop_on_signals():
        try:
            ckpt_io.save(tmp_path, state)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the deferred stop is raised by the 50 ms re-check
                time.sleep(0.01)
        except Stopped as exc:
            stopped = exc
    assert opened and opened[0].sent, "the signal was not sent from inside torch's write"
    assert stopped is not None and stopped.signum == sig, "the deferred stop was never raised"
    back = ckpt_io.load(tmp_path)  # the checkpoint the signal arrived during is whole
    assert back.step == 5 and torch.equal(back.network["w"], state.network["w"])

"""tools/replay_steps.py: a run replayed from its checkpoint reaches the recorded trajectory bit for bit, so what it
prints at a step (angles, orthogonality, distance to the kink) is about the step the archive recorded."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import xarray as xr
import yaml

from sim.config import load_config
from sim.run import run

REPO = Path(__file__).resolve().parents[1]


def replay_steps():
    """tools/replay_steps.py as a module (tools/ is not a package): its ``main`` runs in this process."""
    spec = importlib.util.spec_from_file_location("replay_steps", REPO / "tools" / "replay_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a 2-epoch run and its replay, about 3 s; a research tool, not a module of sim/
def test_the_replay_reaches_the_recorded_angles(tmp_path, tiny_config, one_thread, capsys, monkeypatch):
    doc = tiny_config(train={"epochs": 2, "batch_size": 32, "seed": 0, "dtype": "float64"})
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(load_config(doc).to_dict()))
    store = run(doc, folder / "run.zarr", progress=False)
    with xr.open_zarr(store) as ds:
        recorded = [round(float(a), 4) for a in ds.angle.sel(step=49).values]  # angle_every 7: step 49 recorded
    tool = replay_steps()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert tool.main([str(folder), "--steps", "49", "--eta", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert "from the checkpoint after epoch 1 (step 45)" in out
    replayed = eval(re.search(r"step 49: angles (\[.*\])", out).group(1))
    assert replayed == recorded and max(recorded) > 0.01
    assert "target form:" in out and "eta 1e-09:" in out and "smallest |pre-activation|:" in out
    assert tool.main([str(folder), "--steps", "100"]) == 2
    assert "step(s) [100] come after the run's last step (89)" in capsys.readouterr().err

"""Bad input gets a clear error that names the problem and what to do, never a traceback from inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim import (
    ConfigError,
    LayerSpec,
    Network,
    NetworkConfig,
    NonFiniteError,
    Scheduler,
    ShapeError,
    SingularLayerError,
    preset,
)
from sim.cli import main as cli
from sim.rules import RULES
from tests.helpers import batch, build


def test_unknown_rule_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"unknown rule 'gpp'; registered rules: " + ", ".join(sorted(RULES))):
        Network(preset("digits_shallow", "gpp"))


def test_rule_list_of_wrong_length_is_refused():
    with pytest.raises(ConfigError, match="3 rule names given for a network of 4 layers"):
        Network(preset("digits_shallow", ["gp", "gp", "gp"]))


def test_widths_that_do_not_chain_are_refused():
    cfg = NetworkConfig(input_shape=(1, 8, 8), classes=10, layers=(LayerSpec(32), LayerSpec(64)), rules="gp")
    with pytest.raises(ShapeError, match="dense2.*reading 32 units can forward at most 32.*do not chain"):
        Network(cfg)
    cfg = NetworkConfig(input_shape=(1, 8, 8), classes=10, layers=(LayerSpec(32), LayerSpec(16, aux=3)), rules="gp")
    with pytest.raises(ShapeError, match="declared aux=3 but the layer has 16 aux units"):
        Network(cfg)


def test_unknown_preset_and_dtype():
    with pytest.raises(ConfigError, match="unknown network preset 'cifar11'"):
        preset("cifar11")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        Network(preset("digits_shallow", dtype="float16"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_singular_layer_names_layer_and_condition_number(dtype):
    net = build("digits_deep", "gp", dtype=dtype)
    with torch.no_grad():
        net.layers[3].weight[5] = net.layers[3].weight[6]  # two equal rows: singular
    x, y = batch(net, 4)
    with pytest.raises(SingularLayerError, match=r"layer 'dense4'.*condition number"):
        Scheduler(net).compute(x, y)


def test_badly_conditioned_layer_is_refused_before_it_poisons_the_run():
    net = build("digits_deep", "gp", dtype="float32")
    with torch.no_grad():
        net.layers[2].weight[0] *= 1e-7
    x, y = batch(net, 4)
    with pytest.raises(SingularLayerError, match=r"dense3.*condition number (\d|\.)+e\+0?[6-9]"):
        Scheduler(net).compute(x, y)


def test_non_finite_input_and_update_name_layer_and_step():
    net = build("digits_deep", "bp", dtype="float32")
    x, y = batch(net, 4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="input"):
        Scheduler(net).compute(x, y)
    net = build("digits_deep", "bp", dtype="float32")
    sched = Scheduler(net)
    x, y = batch(net, 4)
    sched.train_step(x, y)
    with torch.no_grad():
        net.layers[4].bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match="step 1") as err:
        sched.compute(x, y)
    assert err.value.step == 1 and err.value.layer is not None


def test_mixed_dtypes_and_devices_are_refused():
    net = build("digits_shallow", "gp", dtype="float32")
    x, y = batch(net, 4)
    with pytest.raises(ShapeError, match=r"float32 but the batch is torch.float64"):
        Scheduler(net).compute(x.double(), y)
    with pytest.raises(ShapeError, match=r"inputs of shape \[B, 1, 8, 8\] expected"):
        Scheduler(net).compute(x.reshape(4, 64), y)
    with pytest.raises(ShapeError, match="labels must lie in 0..9"):
        Scheduler(net).compute(x, y + 10)
    with pytest.raises(ShapeError, match="holds torch.float32 weights but got a torch.float64 input"):
        net.layers[0].check_input(x.double())
    if torch.cuda.is_available():  # pragma: no cover - exercised on GPU machines
        with pytest.raises(ShapeError, match="move it"):
            Scheduler(net).compute(x.cuda(), y.cuda())
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Network(preset("digits_shallow", device="cuda"))


def test_set_weights_with_wrong_shape():
    net = build("digits_shallow", "gp", dtype="float32")
    with pytest.raises(ShapeError, match="layer 'dense2': weight of shape"):
        net.set_weights({"dense2": torch.zeros(3, 3)})


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert cli(["angles", "--net", "digits_shallow", "--rule", "gq", "--json"]) == 2
    assert "error: unknown rule 'gq'" in capsys.readouterr().err
    assert cli(["angles", "--net", "digits_shallow", "--rule", "gp", "--data", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    np.savez(tmp_path / "train_00.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(3, np.uint8))
    assert cli(["angles", "--net", "digits_shallow", "--rule", "gp", "--data", str(tmp_path)]) == 2
    assert "train_00.npz" in capsys.readouterr().err

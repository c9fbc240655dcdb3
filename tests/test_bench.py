"""The benchmark runs end to end on a tiny net and reports what it promises (no timings are asserted)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from torch.utils.flop_counter import FlopCounterMode

from sim import Network, Scheduler, preset
from sim.bench import BenchOptions, run, step_flops
from sim.cli import main
from sim.config import build_network, build_scheduler, load_config
from sim.step_options import StepOptions
from tests.helpers import batch

#: one torch thread: the tiny steps here are faster single-threaded on a shared 2-core box (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"rule", "mode", "dtype", "arithmetic", "ms_per_step", "gflops", "ms_min", "ms_max", "ms_q1", "ms_q3",
        "flop_per_step", "matmul_gflops", "square_matmul_gflops", "peak_mem_mb", "state_mb", "ratio_to_bp",
        "speedup_vs_reference", "samples_per_s", "load_start", "load_end", "threads", "host_syncs_per_step"}


def _bench(capsys, *extra: str) -> list[dict]:
    code = main(["bench", "--net", "digits_shallow", "--batch", "8", "--steps", "2", "--repeats", "2", "--warmup",
                 "1", "--threads", "1", "--json", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_bench_json_has_every_rule_and_the_reference_mode(capsys):
    rows = _bench(capsys, "--rules", "bp,fa,vgp,gp", "--reference-cost")
    assert isinstance(rows, list) and all(KEYS <= set(r) for r in rows)
    assert {(r["rule"], r["mode"]) for r in rows} == {(r, m) for r in ("bp", "fa", "vgp", "gp")
                                                      for m in ("fast", "reference")}
    for r in rows:
        assert r["ms_per_step"] > 0 and r["gflops"] > 0 and r["flop_per_step"] > 0
        assert r["ms_min"] <= r["ms_per_step"] <= r["ms_max"]
        if r["mode"] == "reference":
            assert r["dtype"] == "float64"
            if r["rule"] in ("gp", "vgp"):
                assert (r["arithmetic"], r["inverse"]) == ("target", "inv")
        else:
            assert r["dtype"] == "float32" and r["speedup_vs_reference"] > 0
            if r["rule"] in ("gp", "vgp"):
                assert (r["arithmetic"], r["inverse"]) == ("difference", "lu")
    assert next(r for r in rows if r["rule"] == "bp" and r["mode"] == "fast")["ratio_to_bp"] == 1.0
    assert all(r["host_syncs_per_step"] is None for r in rows)  # counted on CUDA only


def test_bench_rules_all_times_every_registered_rule_in_registry_order(capsys):
    from sim.rules.registry import specs

    code = main(["bench", "--net", "digits_shallow", "--rules", "all", "--batch", "8", "--steps", "1", "--repeats",
                 "1", "--warmup", "0", "--threads", "1", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rule"] for r in rows] == list(specs())
    for r in rows:
        assert r["ms_per_step"] > 0 and r["flop_per_step"] > 0 and r["ratio_to_bp"] > 0
        assert r["flop_uncounted"] and "elementwise" in r["flop_uncounted"][0]
    learned = {r["rule"] for r in rows if len(r["flop_uncounted"]) > 1}
    assert "kp" in learned and not learned & {"bp", "fa", "gp", "dfa"}


def test_bench_without_reference_and_with_options(capsys):
    rows = _bench(capsys, "--rules", "gp", "--dtype", "float64", "--arithmetic", "target", "--check-numerics", "off",
                  "--ortho-every", "2")
    assert len(rows) == 1
    (r,) = rows
    assert (r["rule"], r["mode"], r["dtype"], r["arithmetic"], r["ortho_every"]) == ("gp", "fast", "float64",
                                                                                     "target", 2)
    assert r["ratio_to_bp"] is None and r["speedup_vs_reference"] is None


def test_a_case_is_a_run_config_and_a_run_of_it_takes_the_same_step(capsys, tmp_path):
    path = tmp_path / "gp.yaml"
    doc = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits_shallow_gp.yaml").to_dict()
    doc["train"]["step"] = {"check_numerics": "off", "ortho_every": 2, "skip_aux": False}
    doc["train"]["batch_size"] = 8
    path.write_text(yaml.safe_dump(doc))
    (row,) = _bench(capsys, "--config", str(path))  # no --rules: the config's rules, one case
    assert (row["rule"], row["batch"], row["check_numerics"], row["ortho_every"], row["skip_aux"]) == (
        "gp", 8, "off", 2, False)
    assert row["step"] == {**asdict(StepOptions()), "check_numerics": "off", "ortho_every": 2, "skip_aux": False}
    # the row's config is a run config whose scheduler computes the benchmarked step
    cfg = load_config(row["config"])
    assert cfg.train.step == StepOptions(**row["step"])
    assert build_scheduler(cfg, build_network(cfg)).options == cfg.train.step
    # flags override the file
    (row,) = _bench(capsys, "--config", str(path), "--check-numerics", "step", "--rules", "bp", "--batch", "4")
    assert (row["rule"], row["batch"], row["check_numerics"], row["ortho_every"]) == ("bp", 4, "step", 2)
    rows = _bench(capsys, "--config", str(path), "--rules", "gp", "--reference-cost")
    ref = next(r for r in rows if r["mode"] == "reference")
    assert ref["step"]["symmetric_gram"] is False and ref["config"]["train"]["step"]["symmetric_gram"] is False


def test_bench_table_output_and_bad_options(capsys):
    assert main(["bench", "--net", "digits_shallow", "--rules", "bp", "--batch", "4", "--steps", "1", "--repeats",
                 "1", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "matmul float32" in out
    assert main(["bench", "--net", "digits_shallow", "--rules", "bp,nope"]) == 2
    assert "unknown rule 'nope'" in capsys.readouterr().err
    assert main(["bench", "--net", "digits_shallow", "--rules", "bp", "--batch", "0"]) == 2
    capsys.readouterr()
    # an option the preset does not take is named, with the ones it does (not a TypeError from the preset function)
    assert main(["bench", "--net", "cifar10_conv", "--rules", "bp", "--image-size", "16"]) == 2
    err = capsys.readouterr().err
    assert "preset 'cifar10_conv' takes no option image_size (its options: classes, width_mult)" in err


@pytest.mark.parametrize(("name", "kwargs"), [("digits_deep", {}), ("cifar10_conv", {"width_mult": 0.25})])
@pytest.mark.parametrize("rule", ["bp", "fa", "gp"])
@pytest.mark.parametrize(("skip_aux", "size"), [(True, 4), (True, 32), (False, 32)])
def test_analytic_flops_match_torch_flop_counter(name, kwargs, rule, skip_aux, size):
    net = Network(preset(name, rule, **kwargs))
    x, y = batch(net, size)
    sched = Scheduler(net, options=StepOptions(skip_aux=skip_aux))
    assert any(sched.narrow) == (skip_aux and rule == "gp")
    with FlopCounterMode(display=False) as counter:
        sched.train_step(x, y)
    parts = step_flops(net, x.shape[0], narrow=sched.narrow)
    # the counter sees matmuls and convolutions, not LU factorisations or triangular solves: GP's dense messages
    # solved for the (padded) batch are not in its count; its conv messages (transposed convolutions with columns of
    # M^{-1}) and dense messages through columns of W^{-1} (matmuls) are
    counted = parts["forward"] + parts["weight_grads"] + parts["regularizer"] + parts["messages"]
    if rule == "gp":
        counted -= sum(2 * x.shape[0] * layer.out_shape[0] ** 2 for layer, skip in zip(net.layers[1:], sched.narrow[1:])
                       if not layer.forms_inverse_columns(layer.width if skip else layer.out_shape[0], x.shape[0]))
    assert counter.get_total_flops() == pytest.approx(counted, rel=1e-9)


def _registered_rules() -> list[str]:
    from sim.rules.registry import specs

    return list(specs())


@pytest.mark.parametrize(("name", "kwargs"), [("digits_deep", {}), ("cifar10_conv", {"width_mult": 0.25})])
@pytest.mark.parametrize("rule", _registered_rules())
def test_analytic_flops_of_every_registered_rule(name, kwargs, rule):
    """Every rule's step against torch's counter: equal, except where the count leaves work out by design (GP's LU
    solves, which the counter does not see either way, and a rule's learned-state plasticity: a lower bound)."""
    from sim.bench import learned_state_rules

    net = Network(preset(name, rule, **kwargs))
    x, y = batch(net, 8)
    sched = Scheduler(net, options=StepOptions(skip_aux=False))
    with FlopCounterMode(display=False) as counter:
        sched.train_step(x, y)
    parts = step_flops(net, x.shape[0], narrow=sched.narrow)
    counted = parts["forward"] + parts["weight_grads"] + parts["regularizer"] + parts["messages"]
    if net.rules[0].inverts:  # solved messages: in the analytic count, not in the counter's
        counted -= sum(2 * x.shape[0] * layer.out_shape[0] ** 2 for layer in net.layers[1:]
                       if not layer.forms_inverse_columns(layer.out_shape[0], x.shape[0]))
    if learned_state_rules(net):
        assert counter.get_total_flops() >= counted * (1 - 1e-9)
    else:
        assert counter.get_total_flops() == pytest.approx(counted, rel=1e-9)


def test_a_batch_wider_than_the_layers_counts_solves_not_inverse_columns():
    # digits_deep's square layers are 128 wide: at batch 256 a full-width GP message is solved with the LU factors
    # (no columns of W^{-1} are formed), only the output layer's 10 logits go through 10 columns
    net = Network(preset("digits_deep", "gp"))
    square = [layer.out_shape[0] for layer in net.layers[1:]]
    lu = sum(2 / 3 * n**3 for n in square)
    assert step_flops(net, 256)["factorization"] == pytest.approx(lu, rel=1e-12)
    narrow = Scheduler(net).narrow
    assert step_flops(net, 256, narrow=narrow)["factorization"] == pytest.approx(lu + 2 * 128**2 * 10, rel=1e-12)


def test_options_are_validated():
    from sim.errors import ConfigError

    for bad in ({"rules": ()}, {"rules": ("bp", "bp")}, {"steps": 0}, {"net": "cifar11"}, {"check_numerics": "x"}):
        with pytest.raises(ConfigError):
            run(BenchOptions(**bad))


@pytest.mark.slow
def test_cuda_check_script_runs_every_step_on_tiny_settings(tmp_path):
    # tools/cuda_check.sh is what a session with a lent GPU runs in one call; QUICK=1 DEVICE=cpu runs the same
    # commands on tiny nets, so the script cannot rot unnoticed between GPU sessions
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "QUICK": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(root / "tools" / "cuda_check.sh")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch" in (tmp_path / "device.txt").read_text()
    expected = {"deep": {"bp", "fa", "vgp", "gp"}, "deep_syncs": {"bp", "gp"}, "conv": {"bp", "fa", "gp"}}
    for name, rules in expected.items():
        rows = json.loads((tmp_path / f"{name}.json").read_text())
        assert {r["rule"] for r in rows} == rules
        assert "ms/step" in (tmp_path / f"{name}.txt").read_text()
    assert {r["mode"] for r in json.loads((tmp_path / "deep.json").read_text())} == {"fast", "reference"}
    assert {r["check_numerics"] for r in json.loads((tmp_path / "deep_syncs.json").read_text())} == {"off"}

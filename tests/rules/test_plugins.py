"""A rule in another installed package registers through the entry-point group ``gaitsim.rules`` and runs from YAML
and the command line without touching gaitsim's files (issue 13; docs/rules.md has this example).

The plugin is a tiny package written into ``tmp_path`` with a ``*.dist-info`` holding its entry point, put on
``PYTHONPATH`` of a fresh interpreter: what ``pip install`` of a real package gives ``importlib.metadata``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SPEC = '''
"""A torch-free spec: what gaitsim's schema reads (the entry point names this module)."""
from sim.rules.registry import COMMON, RuleSpec, Setting

SPEC = RuleSpec(
    name="scaled_bp",
    impl="zoo_plugin_rule.rule:ScaledBackprop",
    summary="backprop's message scaled by a constant factor (a plugin example).",
    settings=(*COMMON, Setting("scale", "Factor on the message sent down.", {"type": "number", "exclusiveMinimum": 0})),
    defaults={"lr": 1e-3, "scale": 0.5},
)
'''

RULE = '''
"""The implementation, imported when a network is built."""
from sim.message import Message
from sim.rules.base import Rule, register


@register
class ScaledBackprop(Rule):
    name = "scaled_bp"

    def message_down(self, layer, a_in, a, msg, *, check=True, options=None):
        delta = layer.activation.derivative(a) * msg.error
        return Message.from_error(self.settings.get("scale") * layer.transpose(delta))
'''

CONFIG = """
network: {preset: digits_shallow}
rules: [scaled_bp, scaled_bp, bp, bp]
settings:
  scaled_bp: {scale: 0.25, lr: 2.0e-3}
data: {kind: digits}
train: {epochs: 1, batch_size: 64}
record: {angle_every: 5, probe_size: 4, probe_epochs: [1]}
"""


@pytest.fixture
def plugin(tmp_path) -> dict:
    site = tmp_path / "site"
    pkg = site / "zoo_plugin_rule"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(SPEC)
    (pkg / "rule.py").write_text(RULE)
    info = site / "zoo_plugin_rule-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-plugin-rule\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gaitsim.rules]\nscaled_bp = zoo_plugin_rule:SPEC\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return {"env": env, "site": site}


def _python(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_a_plugin_rule_is_in_the_schema_with_its_settings_without_torch(plugin, tmp_path):
    out = _python("""
        import sys
        from sim.config.schema import load_schema, schema_errors
        s = load_schema()
        assert "scaled_bp" in s["$defs"]["rule_name"]["enum"]
        props = s["properties"]["settings"]["properties"]["scaled_bp"]["properties"]
        assert props["scale"]["default"] == 0.5 and props["lr"]["default"] == 1e-3
        doc = {"network": {"preset": "digits_shallow"}, "rules": "bp", "data": {"kind": "digits"},
               "train": {"epochs": 1}, "settings": {"bp": {"scale": 2.0}}}
        print(schema_errors(doc)[0])
        assert "torch" not in sys.modules
    """, plugin["env"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "settings.bp.scale: rule 'bp' does not read 'scale'" in out.stdout and "read by scaled_bp" in out.stdout


@pytest.mark.slow  # fast sibling: the plugin spec loads and its settings reach the schema, torch-free
def test_a_plugin_rule_runs_from_yaml_and_the_cli(plugin, tmp_path):
    config = tmp_path / "plugin.yaml"
    config.write_text(CONFIG)
    store = tmp_path / "plugin.zarr"
    cli = subprocess.run([sys.executable, "-m", "sim", "run", str(config), "--out", str(store), "--quiet"],
                         env=plugin["env"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    out = _python(f"""
        import torch
        from sim import Network, Scheduler, compare
        from sim.archive import open_run
        from sim.config import load_config
        ds = open_run({str(store)!r})
        assert list(ds.rule.values) == ["scaled_bp", "scaled_bp", "bp", "bp"], ds.rule.values
        assert ds.sizes["epoch"] == 1 and float(ds.test_top1[-1]) > 0.1
        cfg = load_config({str(config)!r})
        assert cfg.settings["scaled_bp"].get("scale") == 0.25 and cfg.settings["scaled_bp"].lr == 2e-3
        assert cfg.to_dict()["settings"]["scaled_bp"]["scale"] == 0.25
        # the message is BP's scaled by 0.25 per scaled_bp layer above: the angle to BP stays 0
        net = Network(cfg.network_config())
        x = torch.rand(16, 1, 8, 8); y = torch.randint(0, 10, (16,))
        corr = compare(Scheduler(net), x, y)
        assert max(corr.angle_deg) < 1e-3, corr.angle_deg
        assert abs(corr.norm_ratio[0] - 0.25) < 1e-4, corr.norm_ratio
        print("ok")
    """, plugin["env"], tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_broken_plugin_is_named(plugin, tmp_path):
    (plugin["site"] / "zoo_plugin_rule-0.1.dist-info" / "entry_points.txt").write_text(
        "[gaitsim.rules]\nscaled_bp = zoo_plugin_rule:NOT_THERE\n")
    out = _python("from sim.config.schema import load_schema; load_schema()", plugin["env"], tmp_path)
    assert out.returncode != 0 and "rule plugin 'scaled_bp'" in out.stderr and "NOT_THERE" in out.stderr


STUDY = """
study: plug
studies:
  plug:
    description: A plugin rule beside BP through the workflow.
    seeds: [0]
    set:
      data: {{size: 200}}
      train: {{epochs: 1}}
      record: {{angle_every: 2, probe_size: 16, probe_epochs: [0, 1], checkpoint_every: 0}}
      settings: {{scaled_bp: {{scale: 0.5}}}}
    experiments:
      digits_shallow:
        run: {run}
        rules: {rules}
"""


def _snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
                           str(workdir), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)


@pytest.mark.slow  # fast siblings: the schema test above; the workflow's own runs are tests/workflow/
def test_a_plugin_rule_runs_through_the_workflow(plugin, tmp_path):
    """The plugin joins `rules: all` and runs as a study's rule beside BP, with its own setting, to the table."""
    run = ROOT / "configs" / "digits_shallow_bp.yaml"
    work = tmp_path / "work"
    work.mkdir()
    every = tmp_path / "all.yaml"
    every.write_text(STUDY.format(run=run, rules="all"))
    dry = _snakemake(work, plugin["env"], "-n", "--configfile", str(every))
    assert dry.returncode == 0, dry.stdout
    assert "rule~scaled_bp" in dry.stdout and "rule~lgp" in dry.stdout
    study = tmp_path / "plug.yaml"
    study.write_text(STUDY.format(run=run, rules="[bp, scaled_bp]"))
    out = _snakemake(work, plugin["env"], "--cores", "2", "--configfile", str(study))
    assert out.returncode == 0, out.stdout
    store = work / "results" / "plug" / "digits_shallow" / "rule~scaled_bp" / "seed~0" / "run.zarr"
    check = _python(f"""
        from sim.archive import open_run
        ds = open_run({str(store)!r})
        assert set(ds.rule.values) == {{"scaled_bp"}}, ds.rule.values
        import json
        settings = json.loads(ds.attrs["config"])["settings"]
        assert settings["scaled_bp"]["scale"] == 0.5, settings
        assert ds.sizes["epoch"] == 1
        print("ok")
    """, plugin["env"], tmp_path)
    assert check.returncode == 0 and "ok" in check.stdout, check.stderr
    table = (work / "results" / "plug" / "table.md").read_text()
    assert "scaled_bp" in table and "bp" in table.replace("scaled_bp", "")


def test_a_plugin_rule_name_that_cannot_name_a_store_folder_is_refused(plugin, tmp_path):
    init = plugin["site"] / "zoo_plugin_rule" / "__init__.py"
    init.write_text(init.read_text().replace('name="scaled_bp"', 'name="Scaled+BP"'))
    out = _python("from sim.config.schema import load_schema; load_schema()", plugin["env"], tmp_path)
    assert out.returncode != 0 and "'Scaled+BP', which is not a rule name" in out.stderr, out.stderr

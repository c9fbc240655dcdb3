"""Figures group runs by network and data, not by experiment; every rule keeps one colour in every figure (from the
registry order); figures save as their suffix asks; unfinished runs (``include_partial=True``) are drawn dotted with
their progress in the label and counted apart in the table, and are never loaded by default."""

from __future__ import annotations

import matplotlib.image
import pytest

from analysis import FIGURES, IncompleteStoreError, load_study, panels, results_table, rule_color, save, to_markdown
from analysis.__main__ import main as analysis_main
from analysis.style import PALETTE, registered_rules, rule_key, rule_marker
from tests.analysis.stores import write_run

DEEP = {"network": {"preset": "digits_deep"}, "data": {"kind": "digits"}, "train": {"epochs": 3}}
SHALLOW = {**DEEP, "network": {"preset": "digits_shallow"}}


def run(root, experiment, rule, seed=0, config=DEEP, **kw):
    name = "run.zarr.partial" if kw.get("complete") is False else "run.zarr"
    return write_run(root / experiment / f"rule~{rule}" / f"seed~{seed}" / name, {**config, "rules": rule},
                     code=kw.pop("code", 0.5), **kw)


@pytest.fixture()
def mixed(tmp_path):
    """bp/fa in one experiment, gp and vgp in their own arithmetic in two others, all on the deep digits net; bp
    on the shallow net in a fourth; gp32 seed 1 still running (a partial store at epoch 1 of 3)."""
    root = tmp_path / "results" / "mixed"
    for rule in ("bp", "fa"):
        run(root, "baseline", rule)
    run(root, "gp32", "gp", config={**DEEP, "settings": {"gp": {"arithmetic": "difference"}}})
    run(root, "vgp64", "vgp", config={**DEEP, "train": {"epochs": 3, "dtype": "float64"}})
    run(root, "shallow", "bp", config=SHALLOW)
    run(root, "gp32", "gp", seed=1, epochs=1, complete=False)
    return root


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_runs_of_one_network_share_a_panel_whatever_their_experiment(mixed):
    ds = load_study(mixed)
    assert [p.title for p in panels(ds)] == ["digits_deep on digits", "digits_shallow on digits"]
    fig = FIGURES["angle_layers"](ds)
    deep, shallow = fig.axes[:2]
    assert legend(deep) == ["bp · baseline", "fa · baseline", "vgp · vgp64", "gp · gp32"]  # registry order
    assert legend(shallow) == ["bp"]
    acc = FIGURES["accuracy"](ds).axes[0]
    test_lines = {line.get_label(): line for line in acc.get_lines() if line.get_label().endswith("test")}
    assert {label: line.get_color() for label, line in test_lines.items()} == {
        "bp · baseline test": rule_color("bp"), "fa · baseline test": rule_color("fa"),
        "gp · gp32 test": rule_color("gp"), "vgp · vgp64 test": rule_color("vgp")}


def test_unfinished_runs_are_loaded_only_when_asked_and_marked(mixed, tmp_path):
    assert list(load_study(mixed).seed.values) == [0]          # default: finished runs only, partial stores unseen
    ds = load_study(mixed, include_partial=True)
    assert list(ds.seed.values) == [0, 1]
    assert ds.unfinished.sel(experiment="gp32", rule="gp").values.tolist() == [0.0, 1.0]
    assert ds.epochs_total.sel(experiment="gp32", rule="gp", seed=1).item() == 3
    ax = FIGURES["accuracy"](ds).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    gp = lines["gp · gp32 (unfinished, 1 of 2 seeds, epoch 1/3) test"]
    assert gp.get_linestyle() == ":" and lines["bp · baseline test"].get_linestyle() == "-"
    assert "PARTIAL: 1 of" in ax.figure.get_suptitle()
    table = results_table(ds)
    row = table[table.experiment == "gp32"].iloc[0]
    assert (row.seeds, row.unfinished) == (2, 1)
    md = to_markdown(table)
    assert "2 (1 UNFINISHED)" in md and "**Partial:** 1 runs are UNFINISHED" in md


def test_a_published_run_wins_over_its_leftover_partial_store(mixed):
    run(mixed, "gp32", "gp", seed=1, code=0.9)                  # published meanwhile; the partial store is left
    ds = load_study(mixed, include_partial=True)
    assert ds.unfinished.sel(experiment="gp32", rule="gp", seed=1).item() == 0
    assert ds.test_top1.sel(experiment="gp32", rule="gp", seed=1).isel(epoch=-1).item() == 0.9


def test_an_incomplete_published_store_is_still_refused_by_default(tmp_path):
    root = tmp_path / "results" / "s"
    path = run(root, "e", "gp", epochs=1)
    write_run(path, {**DEEP, "rules": "gp"}, code=0.5, epochs=1, complete=False)
    with pytest.raises(IncompleteStoreError, match="include_partial"):
        load_study(root)
    assert load_study(root, include_partial=True).unfinished.item() == 1


def test_the_command_line_draws_a_running_study_apart_from_its_results(mixed, capsys):
    assert analysis_main([str(mixed), "--partial", "--format", "svg", "--figure", "accuracy"]) == 0
    out = mixed / "partial"
    assert (out / "figures" / "accuracy.svg").read_text().lstrip().startswith("<?xml")
    assert "UNFINISHED" in (out / "table.md").read_text()
    assert not (mixed / "figures").exists() and "1 of 6 runs loaded are unfinished" in capsys.readouterr().out


@pytest.mark.parametrize("suffix, signature", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_figures_save_as_their_suffix_asks(mixed, tmp_path, suffix, signature):
    path = save(FIGURES["angle_steps"](load_study(mixed)), tmp_path / "deep" / f"angle_steps{suffix.upper()}")
    assert path.read_bytes()[:len(signature)] == signature
    if suffix == ".png":
        assert matplotlib.image.imread(path).shape[0] > 100


def test_save_refuses_a_format_it_does_not_know(mixed, tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.pdf, \.svg"):
        save(FIGURES["accuracy"](load_study(mixed)), tmp_path / "accuracy.jpg")


def test_rule_styles_follow_the_registry_and_are_stable_for_other_names():
    rules = registered_rules()
    assert {"bp", "fa", "gp", "vgp"} <= set(rules)
    assert [rule_color(r) for r in rules[:len(PALETTE)]] == list(PALETTE[:len(rules)])
    assert sorted(["fa+gp", "vgp", "zz", "bp"], key=rule_key) == ["bp", "vgp", "fa+gp", "zz"]
    assert rule_color("fa+gp") == rule_color("fa+gp") and rule_color("fa+gp") not in PALETTE[:len(rules)]
    assert rule_marker("newrule") == rule_marker("newrule")


def test_an_unswept_experiment_is_the_reference_in_every_sweep_panel(tmp_path):
    root = tmp_path / "results" / "s"
    for eta, code in ((1e-5, 0.1), (1e-3, 0.2)):
        run(root, f"sweep/eta~{eta!r}", "gp", code=code)
    run(root, "plain", "bp", code=0.3)
    ds = load_study(root)
    ps = panels(ds)
    assert [p.title for p in ps] == ["digits_deep on digits\neta=1e-05", "digits_deep on digits\neta=0.001"]
    assert [[line.label for line in p.lines] for p in ps] == [["bp · plain", "gp · sweep"]] * 2
    gp = [line for p in ps for line in p.lines if line.rule == "gp"]
    assert [line.runs.test_top1.isel(epoch=-1).item() for line in gp] == [0.1, 0.2]
    assert len(FIGURES["angle_steps"](ds).axes) == 2

"""No traceback on any input (issue 14, part 6): hypothesis sweeps the flags of ``python -m sim run``, ``angles``,
``bench``, ``lease`` and ``python -m analysis`` over values that are negative, zero, huge, NaN, inf, of the wrong
type, empty or unicode. Every invocation either succeeds (exit 0) or prints exactly one ``error:`` line and exits 2;
nothing escapes as an exception (a traceback). The CLIs run in-process (``sim.cli.main``, ``analysis.__main__.main``)
so a sweep costs milliseconds per value. The fast sweep runs by default; ``-m slow`` adds every flag x every edge
value and a longer random sweep; a test checks that every flag that takes a value is in the sweep.

Also the cases an independent probe found, one by one: a deeply nested YAML config, a config path that is a FIFO,
``angles --batch 1000000000``, ``--seed -1`` / ``--seed 18446744073709551616``, ``--device meta``,
``bench --threads 100000``, ``--width-mult 1000000``.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.gpu as gpu
from analysis.__main__ import main as analysis_main
from sim.cli import main as sim_main

TINY = """\
network: {preset: digits_shallow}
rules: bp
data: {kind: digits}
train: {epochs: 1, batch_size: 64, seed: 0}
record: {angle_every: 0, probe_size: 4, probe_epochs: [], checkpoint_every: 1}
"""

#: values at the edges: signs, zero, huge, NaN/inf, wrong types, empty, unicode, path-like
EDGE = ["-1", "0", "1", "-0", "2", "1e30", "1e309", "99999999999999999999", "18446744073709551616",
        "-9223372036854775809", "1000000000", "nan", "NaN", "inf", "-inf", "abc", "", " ", "ü名字", "😀", "1.5", "0x10",
        "-", "/", ".", "..", "/dev/null", "meta", "cuda:99", "cpu", "true", "[1, 2]", "{a: 1}", "%s%n", "a" * 300]

VALUES = st.one_of(
    st.sampled_from(EDGE),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)

ANGLES = ["angles", "--net", "digits_shallow", "--rule", "bp", "--batch", "4"]
BENCH = ["bench", "--net", "digits_shallow", "--rules", "bp", "--batch", "4", "--steps", "1", "--repeats", "1",
         "--warmup", "0", "--tf32", "off", "--json"]
BENCH_DATA = ["bench", "--data", "--net", "digits_shallow", "--rules", "bp", "--batch", "4", "--steps", "1",
              "--repeats", "1", "--warmup", "0", "--json"]
#: (command, base argv, flags fuzzed); "{}" marks a positional argument
CASES = [
    *[("angles", ANGLES, f) for f in ("--batch", "--seed", "--perturb", "--image-size", "--width-mult", "--classes",
                                       "--device", "--net", "--rule", "--dtype", "--arithmetic", "--data",
                                       "--config")],
    *[("bench", BENCH, f) for f in ("--batch", "--steps", "--repeats", "--warmup", "--seed", "--threads",
                                     "--ortho-every", "--image-size", "--width-mult", "--classes", "--device",
                                     "--net", "--rules", "--dtype", "--arithmetic", "--check-numerics", "--tf32",
                                     "--config")],
    *[("bench", BENCH_DATA, f) for f in ("--data-path", "--workers")],
    *[("run", None, f) for f in ("{config}", "--out", "--device", "--log", "--log-file", "--on-diverge", "--set",
                                 "--allow-change")],
    *[("status", None, f) for f in ("{study}", "--configfile")],
    ("lease", ["lease", "--", "true"], "--timeout"),
    ("lease", ["lease", "--", "true"], "--gpus"),
    *[("analysis", None, f) for f in ("{study}", "--out", "--figure", "--format", "--description")],
]
IDS = [f"{c}{f}" for c, _, f in CASES]
FUZZED: dict[str, int] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny run config, an empty study folder, no GPU pool, one thread."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "tiny.yaml").write_text(TINY)
    (root / "study").mkdir()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    saved = {k: os.environ.get(k) for k in (gpu.POOL_ENV, gpu.LOCK_DIR_ENV, gpu.HELD_ENV, "GAITSIM_DEVICE")}
    os.environ[gpu.POOL_ENV] = ""
    os.environ[gpu.LOCK_DIR_ENV] = str(root / "locks")
    for k in (gpu.HELD_ENV, "GAITSIM_DEVICE"):
        os.environ.pop(k, None)
    cwd = os.getcwd()
    os.chdir(root)  # relative paths a fuzzed value names land here
    yield root
    os.chdir(cwd)
    torch.set_num_threads(before)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def invoke(main, argv: list[str]) -> tuple[int, str, str]:
    """Run a CLI in-process; (exit status, stdout, stderr). An exception other than SystemExit fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: usage + one error line, exit 2 (or --help, exit 0)
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(rc or 0), out.getvalue(), err.getvalue()


def check(main, argv: list[str]) -> tuple[int, str]:
    rc, out, err = invoke(main, argv)
    assert "Traceback" not in err + out, (argv, err)
    errors = [line for line in err.splitlines() if "error:" in line]
    if rc == 0:
        assert not errors, (argv, err)
    else:
        assert rc == 2, (argv, rc, err)
        assert len(errors) == 1, (argv, err)
    return rc, err


def argv_for(world: Path, cmd: str, base: list[str] | None, flag: str, value: str, n: int) -> tuple:
    if cmd == "run":
        args = {"{config}": str(world / "tiny.yaml"), "--out": str(world / f"run{n}.zarr"), "--quiet": None}
        if flag == "{config}":
            args["{config}"] = value
        else:
            args[flag] = value
        argv = ["run", args.pop("{config}")]
        for k, v in args.items():
            argv += [k] if v is None else [f"{k}={v}"]
        return sim_main, argv
    if cmd == "analysis":
        study, rest = str(world / "study"), []
        if flag == "{study}":
            study = value
        else:
            rest = [f"{flag}={value}"]
        return analysis_main, [study, *rest] if not study.startswith("-") else [*rest, "--", study]
    if cmd == "status":
        if flag == "{study}":
            return sim_main, ["status", "--", value]
        return sim_main, ["status", str(world / "study"), f"{flag}={value}"]
    if cmd == "lease":  # its options come before the command after '--'
        return sim_main, ["lease", f"{flag}={value}", *base[1:]]
    return sim_main, [*base, f"{flag}={value}"]


def sweep(world: Path, cmd: str, base, flag: str, value: str) -> None:
    key = f"{cmd} {flag}"
    FUZZED[key] = FUZZED.get(key, 0) + 1
    main, argv = argv_for(world, cmd, base, flag, value, sum(FUZZED.values()))
    check(main, argv)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("cmd", "base", "flag"), CASES, ids=IDS)
@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=VALUES)
def test_flag_values_fast(world, cmd, base, flag, value):
    sweep(world, cmd, base, flag, value)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(("cmd", "base", "flag"), CASES, ids=IDS)
def test_every_flag_every_edge_value(world, cmd, base, flag):
    for value in EDGE:
        sweep(world, cmd, base, flag, value)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize(("cmd", "base", "flag"), CASES, ids=IDS)
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=VALUES)
def test_flag_values_slow(world, cmd, base, flag, value):
    sweep(world, cmd, base, flag, value)


# ----- the cases the probe found ------------------------------------------------------------------------------------
def test_deeply_nested_yaml(world):
    path = world / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    rc, err = check(sim_main, ["run", str(path), "--out", str(world / "deep.zarr")])
    assert rc == 2 and "nests too deeply for a run config" in err
    rc, err = check(sim_main, ["angles", "--config", str(path)])
    assert rc == 2 and "nests too deeply" in err


def test_config_path_that_is_a_fifo_is_refused_at_once(world):
    fifo = world / "fifo.yaml"
    if not fifo.exists():
        os.mkfifo(fifo)
    t0 = time.monotonic()
    rc, err = check(sim_main, ["run", str(fifo), "--out", str(world / "fifo.zarr")])
    assert rc == 2 and "is not a regular file" in err and time.monotonic() - t0 < 10
    rc, err = check(sim_main, ["bench", "--config", str(fifo)])
    assert rc == 2 and "is not a regular file" in err


@pytest.mark.parametrize("argv", [["angles", "--net", "digits_deep", "--rule", "gp", "--batch", "1000000000"],
                                  [*BENCH, "--batch", "1000000000"],
                                  ["angles", "--net", "cifar10_conv", "--rule", "gp", "--width-mult", "1000"],
                                  ["bench", "--net", "cifar10_conv", "--rules", "bp", "--width-mult", "1000"]])
def test_sizes_that_cannot_fit_are_refused_naming_the_memory(world, argv):
    t0 = time.monotonic()
    rc, err = check(sim_main, argv)
    assert rc == 2 and "would need about" in err and "GiB" in err and time.monotonic() - t0 < 20


def test_width_mult_that_overflows(world):
    rc, err = check(sim_main, ["angles", "--net", "imagenet_conv", "--rule", "gp", "--width-mult", "1000000"])
    assert rc == 2 and "network: the network cannot be built at this size" in err


@pytest.mark.parametrize("argv", [[*ANGLES, "--seed", "-1"], [*BENCH, "--seed", "-1"],
                                  [*ANGLES, "--seed", "18446744073709551616"],
                                  [*BENCH, "--seed", "18446744073709551616"],
                                  [*ANGLES, "--device", "meta"], [*BENCH, "--device", "meta"]])
def test_seeds_and_devices_out_of_range(world, argv):
    rc, err = check(sim_main, argv)
    assert rc == 2 and ("train.seed" in err or "train.device" in err)


def test_bench_threads_bounded(world):
    rc, err = check(sim_main, [*BENCH, "--threads", "100000"])
    assert rc == 2 and "--threads must be between 1 and" in err
    assert torch.get_num_threads() == 1


def test_lease_timeout_nan_and_commands(world):
    rc, err = check(sim_main, ["lease", "--timeout", "nan", "--", "true"])
    assert rc == 2 and "--timeout must be" in err
    for cmd in ("", "/", "no-such-command-ü"):
        rc, err = check(sim_main, ["lease", "--timeout", "0", "--", cmd])
        assert rc == 2 and ("command not found" in err or "cannot run" in err)


def test_every_flag_that_takes_a_value_is_fuzzed():
    """A flag added to a subcommand (or to ``python -m analysis``) must join the sweep: every option of every
    subcommand that takes a value is in CASES."""
    import argparse

    import analysis.__main__ as analysis_cli
    from sim.cli import build_parser

    def value_flags(parser: argparse.ArgumentParser) -> set[str]:
        return {a.option_strings[-1] for a in parser._actions
                if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)}

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    fuzzed = {(cmd, flag) for cmd, _, flag in CASES}
    missing = sorted((name, flag) for name, parser in sub.choices.items() for flag in value_flags(parser)
                     if (name, flag) not in fuzzed)
    assert not missing, f"flags not fuzzed: {missing}; add them to CASES"
    source = Path(analysis_cli.__file__).read_text()
    analysis_flags = {f for cmd, _, f in CASES if cmd == "analysis" and f.startswith("--")}
    takes_value = [line.split('"')[1] for line in source.splitlines()
                   if 'p.add_argument("--' in line and 'action="store_true"' not in line]
    assert set(takes_value) <= analysis_flags, f"analysis flags not fuzzed: {set(takes_value) - analysis_flags}"

"""Helpers of the reliability tests (tests/reliability/: test_faults.py, test_safety.py; docs/reliability.md).

* :func:`run_cli`: run ``python -m sim ...`` (the CLI's ``main``) in a child process forked from a forkserver that
  has imported torch and the package once, so a test can SIGKILL hundreds of runs (at a :mod:`sim.faults` site or
  after a delay) for the price of a fork each instead of a fresh interpreter each;
* :func:`archive_differences`: how two run stores differ (every data variable but wall times, and the attributes);
* :func:`leftovers`: temp files and half-deleted stores a run should not leave behind;
* file damage: :func:`truncate`, :func:`flip_byte`, :func:`append_garbage`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path

import numpy as np

_CONTEXT = None


def context():
    """The forkserver context; its server imports the package (and torch) once, at the first start."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = mp.get_context("forkserver")
        # everything a run imports lazily too (digits come through scikit-learn, Adam imports torch._dynamo)
        ctx.set_forkserver_preload(["torch", "torch._dynamo", "sklearn.datasets", "zarr", "xarray", "sim.cli",
                                    "sim.run", "sim.data", "tests.faultinject"])
        _CONTEXT = ctx
    return _CONTEXT


def _child(argv: list[str], fault: str | None, output: str) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's stdout until it exits
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    import torch

    torch.set_num_threads(1)
    from sim import faults
    from sim.cli import main

    faults.arm(fault)
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001 - report like the interpreter would, then exit with its status
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_cli(argv: list[str], *, fault: str | None = None, kill_after: float | None = None,
            output: Path | str = os.devnull, timeout: float = 300) -> int:
    """Run the CLI with ``argv`` in a forked child; returns its exit status (``-signal.SIGKILL`` if killed).

    ``fault``: a ``GAITSIM_FAULT`` plan armed in the child. ``kill_after``: SIGKILL the child after that many
    seconds if it is still running. The child's stdout and stderr go to ``output``."""
    proc = context().Process(target=_child, args=(list(argv), fault, str(output)))
    proc.start()
    try:
        if kill_after is not None:
            proc.join(kill_after)
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout)
        if proc.is_alive():
            raise TimeoutError(f"gaitsim {' '.join(argv)} ran longer than {timeout} s")
        return proc.exitcode
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


# ----- comparing stores ---------------------------------------------------------------------------------------------
#: what may differ between two runs of one config (git_commit: a commit made in the checkout between the two)
VOLATILE_VARS = ("epoch_wall_s",)
VOLATILE_ATTRS = ("start_time", "end_time", "device", "git_commit", "writer_pid", "writer_host")


_LOADED: dict[tuple[str, int], tuple[dict, dict]] = {}


def _load(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """A store's variables (in memory) and attributes; a store read before and unchanged since is not read again."""
    from sim.archive import open_run

    key = (str(path), (Path(path) / "zarr.json").stat().st_mtime_ns)
    if key not in _LOADED:
        ds = open_run(path)
        _LOADED.clear()  # keep one store: the reference every comparison is made against
        _LOADED[key] = ({k: ds[k].values for k in [*ds.data_vars, *ds.coords]}, dict(ds.attrs))
    return _LOADED[key]


def archive_differences(a: Path, b: Path) -> list[str]:
    """How the run stores ``a`` (the reference; kept in memory between calls) and ``b`` differ: every data variable
    and coordinate except wall times (values, dtypes, shapes), and the attributes except times and device; empty if
    they are the same run."""
    from sim.archive import open_run

    vars_a, attrs_a = _load(a)
    db = open_run(b)
    names_a = set(vars_a)
    names_b = set(db.data_vars) | set(db.coords)
    diffs = [f"variables only in one store: {sorted(names_a ^ names_b)}"] if names_a != names_b else []
    for name in sorted((names_a & names_b) - set(VOLATILE_VARS)):
        va, vb = vars_a[name], db[name].values
        if va.dtype != vb.dtype or va.shape != vb.shape:
            diffs.append(f"{name}: {va.dtype}{va.shape} != {vb.dtype}{vb.shape}")
        elif not np.array_equal(va, vb, equal_nan=va.dtype.kind == "f"):
            diffs.append(f"{name}: values differ")
    attrs_a = {k: v for k, v in attrs_a.items() if k not in VOLATILE_ATTRS}
    attrs_b = {k: v for k, v in db.attrs.items() if k not in VOLATILE_ATTRS}
    if attrs_a != attrs_b:
        keys = sorted(k for k in set(attrs_a) | set(attrs_b) if attrs_a.get(k) != attrs_b.get(k))
        diffs.append(f"attributes differ: {keys}")
    return diffs


def leftovers(store: Path) -> list[Path]:
    """Files a finished run should not leave: zarr's ``*.partial`` temp files, checkpoint ``*.tmp`` files, and
    renamed-aside stores of an interrupted ``--overwrite``."""
    store = Path(store)
    found = list(store.rglob("*.partial")) + list(store.rglob("*.tmp")) if store.exists() else []
    found += [p for p in store.parent.iterdir() if p.name.startswith(f".{store.name}.deleting-")]
    return found


# ----- damaging files -----------------------------------------------------------------------------------------------
def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut ``path`` to ``fraction`` of its size (a write that stopped half way)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Invert one byte at ``where`` (a fraction of the size) of ``path``: same size, different content (bit rot)."""
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(len(data) * where))
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def append_garbage(path: Path, n: int = 16) -> None:
    """Append ``n`` bytes to ``path`` (a second writer that scribbled over the end)."""
    with open(path, "ab") as f:
        f.write(bytes(range(n)))


# ----- bad inputs (docs/bad_input.md) -------------------------------------------------------------------------------
# Each entry produces, in the current folder, one bad input and returns what the user sees: the CLI's stderr (an
# ``error: ...`` line, or the warnings a run logs before it goes on), with the folder's path left out. The table in
# docs/bad_input.md is written from these (``python -m tests.faultinject``) and
# tests/reliability/test_safety.py checks it.
import contextlib  # noqa: E402
import copy  # noqa: E402
import html  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from unittest import mock  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bad_input.md"


@dataclass(frozen=True)
class BadInput:
    id: str
    what: str
    """The bad input, in Markdown."""
    produce: Callable[[], str]
    runs: bool
    """Whether it trains (seconds) rather than only validates (milliseconds)."""


BAD_INPUTS: list[BadInput] = []


def bad_input(id: str, what: str, runs: bool = False):
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        BAD_INPUTS.append(BadInput(id, what, fn, runs))
        return fn
    return register


def _doc(**changes) -> dict:
    """A tiny run (2 epochs of 10 steps on 320 digits) with ``changes`` merged into its sections."""
    from tests.conftest import TINY

    doc = copy.deepcopy(TINY)
    doc["data"] = {"kind": "digits", "size": 320}
    for key, value in changes.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
    return doc


def _config(doc: dict, name: str = "run.yaml") -> str:
    import yaml

    Path(name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return name


def _cli(*argv: str) -> str:
    """Run the CLI in this process; its stderr."""
    import torch

    from sim.cli import main

    err = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(list(argv))
            except SystemExit:  # argparse's own errors
                pass
    finally:
        torch.set_num_threads(threads)
    return err.getvalue().strip()


def _warnings(store: str) -> str:
    """The warnings a run logged (on stderr without --quiet, and in STORE.log), without the time stamps."""
    lines = Path(store + ".log").read_text().splitlines()
    return "\n".join(line.split(" WARNING ", 1)[1] for line in lines if " WARNING " in line)


def _interrupted(store: str = "run.zarr") -> str:
    """A 3-epoch run stopped in epoch 3: last.pt after epoch 2 (step 20), prev.pt after epoch 1 (step 10)."""
    import sim.schedule
    from sim.run import run

    cfg = _config(_doc(train={"epochs": 3}, record={"probe_epochs": [0, 1, 3]}))
    original = sim.schedule.Scheduler.compute

    def compute(self, x, y):
        if self.step_count == 25:
            raise KeyboardInterrupt
        return original(self, x, y)

    with mock.patch.object(sim.schedule.Scheduler, "compute", compute), contextlib.suppress(KeyboardInterrupt):
        run(cfg, store, progress=False)
    return cfg


def _resume(cfg: str, store: str = "run.zarr") -> str:
    err = _cli("run", cfg, "--out", store, "--quiet", "--resume")
    return "\n".join(filter(None, [_warnings(store), err]))


# configs
@bad_input("cfg-typo", "a misspelled key: `train: {epoch: 2}` (for `epochs`)")
def _():
    doc = _doc()
    doc["train"]["epoch"] = doc["train"].pop("epochs")
    return _cli("run", _config(doc), "--out", "x")


@bad_input("cfg-typo-only", "a misspelled key and nothing else wrong: `record: {probe_sise: 8}`")
def _():
    doc = _doc()
    doc["record"]["probe_sise"] = doc["record"].pop("probe_size")
    return _cli("run", _config(doc), "--out", "x")


bad_input("cfg-unknown-rule", "an unknown rule: `rules: gpp`")(
    lambda: _cli("run", _config(_doc(rules="gpp")), "--out", "x"))
bad_input("cfg-negative-lr", "a negative learning rate: `settings: {gp: {lr: -1}}`")(
    lambda: _cli("run", _config(_doc(settings={"gp": {"lr": -1}})), "--out", "x"))
bad_input("cfg-rules-length", "too few rules for the layers: `rules: [gp, gp]` (digits_shallow has 4 layers)")(
    lambda: _cli("run", _config(_doc(rules=["gp", "gp"])), "--out", "x"))
bad_input("cfg-unknown-preset", "an unknown preset: `network: {preset: cifar10_dep}`")(
    lambda: _cli("run", _config(_doc(network={"preset": "cifar10_dep"})), "--out", "x"))
bad_input("cfg-unknown-kind", "an unknown data kind: `data: {kind: mnist}`")(
    lambda: _cli("run", _config(_doc(data={"kind": "mnist"})), "--out", "x"))
bad_input("cfg-wrong-type", "a fraction where a count goes: `train: {epochs: 2.5}`")(
    lambda: _cli("run", _config(_doc(train={"epochs": 2.5})), "--out", "x"))
bad_input("cfg-nan", "NaN in a config: `settings: {gp: {lr: .nan}}`")(
    lambda: _cli("run", _config(_doc(settings={"gp": {"lr": float("nan")}})), "--out", "x"))
bad_input("cfg-huge-int", "a huge integer: `train: {batch_size: 1000000000000}`")(
    lambda: _cli("run", _config(_doc(train={"batch_size": 10**12})), "--out", "x"))
@bad_input("cfg-layers-chain", "layers that do not chain: `network: {input_shape: [1, 8, 8], classes: 10, layers: "
           "[{width: 32}, {width: 64}]}` under GP (a square layer cannot widen)")
def _():
    doc = _doc()
    doc["network"] = {"input_shape": [1, 8, 8], "classes": 10, "layers": [{"width": 32}, {"width": 64}]}
    return _cli("run", _config(doc), "--out", "x")
bad_input("cfg-image-size", "an image too small for the GP output layer: `network: {preset: imagenet_conv, "
          "image_size: 16}`")(
    lambda: _cli("run", _config(_doc(network={"preset": "imagenet_conv", "image_size": 16})), "--out", "x"))
bad_input("cfg-name-path", "a run name that could escape a folder: `name: ../../etc`")(
    lambda: _cli("run", _config(_doc(name="../../etc")), "--out", "x"))


@bad_input("cfg-yaml-code", "YAML that would run code: `train: !!python/object/apply:os.system [\"touch pwned\"]`")
def _():
    Path("evil.yaml").write_text('train: !!python/object/apply:os.system ["touch pwned"]\n')
    out = _cli("run", "evil.yaml", "--out", "x")
    assert not Path("pwned").exists()
    return out


@bad_input("cfg-yaml-alias", "a YAML alias inside its own anchor: `network: &n {preset: digits_shallow, x: *n}`")
def _():
    Path("loop.yaml").write_text("network: &n {preset: digits_shallow, x: *n}\nrules: gp\ndata: {kind: digits}\n"
                                 "train: {epochs: 1}\n")
    return _cli("run", "loop.yaml", "--out", "x")


bad_input("cfg-missing", "a config file that does not exist")(lambda: _cli("run", "nope.yaml", "--out", "x"))


@bad_input("cfg-not-mapping", "a config that is a list, not a mapping")
def _():
    Path("list.yaml").write_text("- rules: gp\n")
    return _cli("run", "list.yaml", "--out", "x")


# data
@bad_input("data-imagenet-path", "the shipped ImageNet config, whose `data.path` is `null` until you set it")
def _():
    shutil.copy(ROOT / "configs" / "imagenet_conv_gp.yaml", "imagenet_conv_gp.yaml")
    return _cli("run", "imagenet_conv_gp.yaml", "--out", "x")


bad_input("data-missing", "a data folder that does not exist: `data: {kind: npz, path: nope}`")(
    lambda: _cli("run", _config(_doc(data={"kind": "npz", "path": "nope"})), "--out", "x"))


@bad_input("data-empty", "an empty data folder: `data: {kind: npz, path: empty}`")
def _():
    Path("empty").mkdir(exist_ok=True)
    return _cli("run", _config(_doc(data={"kind": "npz", "path": "empty"})), "--out", "x")


@bad_input("data-npz-shapes", "npz shards whose `x` and `y` disagree (4 images, 3 labels)")
def _():
    Path("shards").mkdir(exist_ok=True)
    for split in ("train", "test"):
        np.savez(f"shards/{split}_00.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(3, np.uint8))
    return _cli("run", _config(_doc(data={"kind": "npz", "path": "shards"})), "--out", "x")


bad_input("data-classes", "a network with other classes than the data: `network: {preset: digits_shallow, "
          "classes: 12}`")(
    lambda: _cli("run", _config(_doc(network={"preset": "digits_shallow", "classes": 12})), "--out", "x"))
bad_input("data-probe-size", "a probe batch bigger than the test split: `record: {probe_size: 5000}`")(
    lambda: _cli("run", _config(_doc(record={"probe_size": 5000})), "--out", "x"))


# the command line and the output folder
bad_input("cli-no-cuda", "`--device cuda` on a machine without a GPU")(
    lambda: _cli("run", _config(_doc()), "--out", "x", "--device", "cuda"))
bad_input("cli-both-flags", "`--resume` and `--overwrite` together")(
    lambda: _cli("run", _config(_doc()), "--out", "x", "--resume", "--overwrite").splitlines()[-1])


@bad_input("store-exists", "an existing store, without `--resume` or `--overwrite`", runs=True)
def _():
    cfg = _config(_doc(train={"epochs": 1}, record={"probe_epochs": [1]}))
    _cli("run", cfg, "--out", "run.zarr", "--quiet")
    return _cli("run", cfg, "--out", "run.zarr", "--quiet")


@bad_input("store-not-a-run", "`--out` (with `--overwrite`) pointing at a folder that is not a run store")
def _():
    Path("thesis").mkdir(exist_ok=True)
    Path("thesis/chapter1.tex").write_text("...")
    return _cli("run", _config(_doc()), "--out", "thesis", "--overwrite")


@bad_input("resume-other-config", "`--resume` with a changed config (`train: {seed: 5}`)", runs=True)
def _():
    cfg = _config(_doc(train={"epochs": 1}, record={"probe_epochs": [1]}))
    _cli("run", cfg, "--out", "run.zarr", "--quiet")
    return _cli("run", _config(_doc(train={"epochs": 1, "seed": 5}, record={"probe_epochs": [1]})),
                "--out", "run.zarr", "--quiet", "--resume")


# damaged files
@bad_input("ckpt-torn", "a checkpoint cut in half (`last.pt`), then `--resume`: the run goes on from `prev.pt`",
           runs=True)
def _():
    cfg = _interrupted()
    truncate(Path("run.zarr/_checkpoints/last.pt"))
    return _resume(cfg)


@bad_input("ckpt-all-torn", "both checkpoints damaged (`last.pt` cut, `prev.pt` bit rot), then `--resume`",
           runs=True)
def _():
    cfg = _interrupted()
    truncate(Path("run.zarr/_checkpoints/last.pt"))
    flip_byte(Path("run.zarr/_checkpoints/prev.pt"))
    return _resume(cfg)


@bad_input("ckpt-pickle", "a checkpoint that holds a pickle which would run code (its checksum even listed in "
           "the manifest), then `--resume`", runs=True)
def _():
    import hashlib
    import json

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    cfg = _interrupted()
    last = Path("run.zarr/_checkpoints/last.pt")
    torch.save({"format": 2, "payload": Evil()}, last)
    manifest = Path("run.zarr/_checkpoints/manifest.json")
    doc = json.loads(manifest.read_text())
    doc["checkpoints"].insert(0, {"sha256": hashlib.sha256(last.read_bytes()).hexdigest()})
    manifest.write_text(json.dumps(doc))
    out = _resume(cfg)
    assert not Path("pwned").exists()
    return out


@bad_input("chunk-torn", "an archive chunk of the last checkpointed epoch cut in half (`loss/c/1`), then "
           "`--resume`: the run goes on from `prev.pt`", runs=True)
def _():
    cfg = _interrupted()
    truncate(Path("run.zarr/loss/c/1"))
    return _resume(cfg)


@bad_input("chunk-torn-kept", "a damaged archive chunk that every checkpoint keeps (`loss/c/0`, bit rot), then "
           "`--resume`", runs=True)
def _():
    cfg = _interrupted()
    flip_byte(Path("run.zarr/loss/c/0"))
    return _resume(cfg)


@bad_input("complete-damaged", "`--resume` of a complete store whose archive has a damaged chunk", runs=True)
def _():
    cfg = _config(_doc())
    _cli("run", cfg, "--out", "run.zarr", "--quiet")
    flip_byte(Path("run.zarr/loss/c/1"))
    return _cli("run", cfg, "--out", "run.zarr", "--quiet", "--resume")


# failing writes and numbers
def _with_fault(spec: str) -> str:
    from sim import faults

    faults.arm(spec)
    try:
        return _cli("run", _config(_doc()), "--out", "run.zarr", "--quiet")
    finally:
        faults.arm(None)


bad_input("disk-full-checkpoint", "a full disk while a checkpoint is written "
          "(`GAITSIM_FAULT=checkpoint.write:2:enospc`)", runs=True)(lambda: _with_fault("checkpoint.write:2:enospc"))
bad_input("disk-full-archive", "a full disk while the archive grows (`GAITSIM_FAULT=archive.append:27:enospc`)",
          runs=True)(lambda: _with_fault("archive.append:27:enospc"))
bad_input("read-only", "a read-only output folder (`GAITSIM_FAULT=archive.create:1:erofs`; a real `chmod` "
          "gives `Permission denied` in the same place)", runs=True)(lambda: _with_fault("archive.create:1:erofs"))
bad_input("nan-loss", "a learning rate that makes the loss overflow: `settings: {bp: {lr: 1.0e+10}}` on "
          "digits_deep", runs=True)(
    lambda: _cli("run", _config(_doc(network={"preset": "digits_deep"}, rules="bp",
                                     settings={"bp": {"lr": 1e10}})), "--out", "run.zarr", "--quiet"))


@bad_input("singular-layer", "a square GP layer that turns singular (two equal rows of `dense3` after step 14, "
           "injected)", runs=True)
def _():
    import torch

    import sim.schedule

    original = sim.schedule.Scheduler.apply

    def apply(self, result):
        original(self, result)
        if self.step_count == 14:
            with torch.no_grad():
                self.net.layers[2].weight[5] = self.net.layers[2].weight[6]

    with mock.patch.object(sim.schedule.Scheduler, "apply", apply):
        return _cli("run", _config(_doc()), "--out", "run.zarr", "--quiet")


@bad_input("api-mixed-dtype", "Python API: a float64 batch into a float32 network "
           "(`Scheduler(net).compute(x.double(), y)`)")
def _():
    import torch

    from sim import Network, Scheduler, preset

    net = Network(preset("digits_shallow", "gp"))
    try:
        Scheduler(net).compute(torch.zeros(4, 1, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    except Exception as exc:  # noqa: BLE001 - what the user sees is the exception
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("accepted")


# issue 14, parts 5-7: inputs the CLI once met with a traceback, a hang or silence
def _machine(text: str) -> str:
    """Figures that depend on the machine (free memory, core count) as N."""
    text = re.sub(r"only [0-9.e+]+ GiB is free", "only N GiB is free", text)
    return re.sub(r"between 1 and \d+ \(4 x the \d+ cores", "between 1 and 4N (4 x the N cores", text)


@bad_input("cli-deep-yaml", "a config nested 5,000 levels deep (`a: [[[[...]]]]`)")
def _():
    Path("deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    return _cli("run", "deep.yaml", "--out", "run.zarr")


@bad_input("cli-fifo", "a config path that is a FIFO (`mkfifo run.yaml`): it used to hang")
def _():
    os.mkfifo("run.yaml")
    return _cli("run", "run.yaml", "--out", "run.zarr")


bad_input("cli-angles-batch", "`angles --batch 1000000000` (N: the free memory of the machine)")(
    lambda: _machine(_cli("angles", "--net", "digits_deep", "--rule", "gp", "--batch", "1000000000")))
bad_input("cli-width-mult", "`angles --net imagenet_conv --width-mult 1000000`")(
    lambda: _cli("angles", "--net", "imagenet_conv", "--rule", "gp", "--width-mult", "1000000"))
bad_input("cli-width-mult-fits", "`bench --net cifar10_conv --width-mult 1000` (N: the free memory)")(
    lambda: _machine(_cli("bench", "--net", "cifar10_conv", "--rules", "bp", "--width-mult", "1000")))
bad_input("cli-seed-negative", "`angles --seed -1` (and `bench`)")(
    lambda: _cli("angles", "--net", "digits_deep", "--rule", "gp", "--seed", "-1"))
bad_input("cli-seed-huge", "`bench --seed 18446744073709551616`")(
    lambda: _cli("bench", "--net", "digits_deep", "--rules", "bp", "--seed", "18446744073709551616"))
bad_input("cli-device-meta", "`angles --device meta`")(
    lambda: _cli("angles", "--net", "digits_deep", "--rule", "gp", "--device", "meta"))
bad_input("cli-threads", "`bench --threads 100000` (it used to segfault; N: the core count)")(
    lambda: _machine(_cli("bench", "--net", "digits_deep", "--rules", "bp", "--threads", "100000")))
bad_input("cli-long-path", "a path the operating system refuses: `angles --data` with a 300-character name")(
    lambda: _cli("angles", "--net", "digits_deep", "--rule", "gp", "--data", "a" * 300))


@bad_input("lease-symlink", "a symbolic link planted at a GPU lock path (`gpu-0.lock -> ~/.bashrc`)")
def _():
    Path("locks").mkdir()
    Path("victim").write_text("precious\n")
    os.symlink(os.path.abspath("victim"), "locks/gpu-0.lock")
    env = {"GAITSIM_GPU_POOL": "0", "GAITSIM_GPU_LOCK_DIR": "locks"}
    with mock.patch.dict(os.environ, env), contextlib.ExitStack() as stack:
        for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "GAITSIM_GPU_LEASE"):
            stack.enter_context(mock.patch.dict(os.environ, {key: ""}))
            del os.environ[key]
        out = _cli("lease", "--timeout", "0", "--", "true")
    assert Path("victim").read_text() == "precious\n"
    return out


@bad_input("analysis-crafted-store", "`python -m analysis` on a store whose metadata names the pickle codec "
           "(a chunk that would run code)")
def _():
    from analysis.__main__ import main
    from tests.helpers import plant_pickle, write_store

    store = write_store(Path("results/quick/deep/rule~gp/seed~0/run.zarr"))
    plant_pickle(store, Path("pwned").resolve())
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        main(["results/quick"])
    return err.getvalue().strip()


@bad_input("resume-other-lr", "`--resume` with a lower learning rate after a stop, without `--allow-change`",
           runs=True)
def _():
    cfg = _config(_doc(train={"epochs": 1}, record={"probe_epochs": [1]}))
    _cli("run", cfg, "--out", "run.zarr", "--quiet")
    return _cli("run", _config(_doc(train={"epochs": 1}, record={"probe_epochs": [1]},
                                    settings={"gp": {"lr": 1e-4}})), "--out", "run.zarr", "--quiet", "--resume")


@bad_input("resume-allow-change", "the documented recovery: `--resume --allow-change settings.gp.lr` with a "
           "lower learning rate (the change is logged and recorded in the attribute `changes`)", runs=True)
def _():
    cfg = _interrupted()
    low = _config(_doc(train={"epochs": 3}, record={"probe_epochs": [0, 1, 3]}, settings={"gp": {"lr": 1e-4}}))
    assert cfg == low
    err = _cli("run", low, "--out", "run.zarr", "--quiet", "--resume", "--allow-change", "settings.gp.lr")
    return "\n".join(filter(None, [_warnings("run.zarr"), err]))


@bad_input("loss-explodes", "a learning rate that blows the loss up without a NaN: `settings: {bp: {lr: 1000}}`; "
           "the run goes on, with a warning", runs=True)
def _():
    _cli("run", _config(_doc(rules="bp", settings={"bp": {"lr": 1e3}})), "--out", "run.zarr", "--quiet")
    return _warnings("run.zarr")


@bad_input("run-sigterm", "`kill -TERM` (or a closed terminal's SIGHUP) while a run trains", runs=True)
def _():
    import signal
    import subprocess
    import sys
    import time

    cfg = _config(_doc(train={"epochs": 40}, record={"probe_epochs": []}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sim", "run", cfg, "--out", "run.zarr", "--quiet"], env=env,
                            stderr=subprocess.PIPE, text=True)
    while not (Path("run.zarr.log").exists() and "epoch 1/40" in Path("run.zarr.log").read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1].strip()
    return "\n".join([Path("run.zarr.log").read_text().strip().splitlines()[-1].split(" ERROR ", 1)[1], err])


# ----- the table ----------------------------------------------------------------------------------------------------
def produce(case: BadInput, folder: Path) -> str:
    """Run ``case`` in ``folder`` (an empty scratch folder); what the user sees, with the folder's path cut out."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        out = case.produce()
    finally:
        os.chdir(here)
    return out.replace(f"{folder}{os.sep}", "").replace(str(folder), ".").strip()


def cell(text: str) -> str:
    """A message as a Markdown table cell: one ``<code>`` per line (HTML-escaped, ``|`` as ``&#124;``)."""
    return "<br>".join(f"<code>{html.escape(line, quote=False).replace('|', '&#124;')}</code>"
                       for line in text.splitlines())


def uncell(text: str) -> str:
    return "\n".join(html.unescape(part.replace("&#124;", "|")) for part in re.findall(r"<code>(.*?)</code>", text))


def table_rows(path: Path = TABLE) -> dict[str, tuple[str, str]]:
    """``id -> (bad input, message)`` of every row of the table in ``path``."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| `([a-z0-9-]+)` \| (.*) \| (<code>.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), uncell(m.group(3)))
    return rows


HEADER = """# What bad input looks like

Every bad input we could think of, and exactly what `python -m sim run` prints for it (stderr; `error: ...` lines
end the run with exit status 2, the other lines are warnings of a run that goes on). The messages are copied from
real runs by `python -m tests.faultinject` (which writes this file) and checked by
`tests/reliability/test_safety.py`, so they stay true; paths are relative to the folder the run was started in.
Where a fault cannot be produced on demand (a full disk, a read-only folder) it is injected with `GAITSIM_FAULT`
(docs/reliability.md), which adds `(injected by ...)` to the operating system's message.

| id | bad input | what you see |
|---|---|---|
"""


def write_table(path: Path = TABLE) -> None:
    import tempfile

    rows = []
    for case in BAD_INPUTS:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(f"| `{case.id}` | {case.what} | {cell(produce(case, Path(tmp).resolve()))} |")
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_table()
    print(f"wrote {TABLE} ({len(BAD_INPUTS)} bad inputs)")

"""Data-parallel runs, the fast part (sim/distributed.py; docs/runs.md, "Several GPUs"): the launch read from
torchrun's and srun's variables, the refusals, a batch computed in parts adding up to the whole batch's step for
every rule (in one process), and one spawned 2-process group (gloo) through every collective, a failure on either
rank among them, plus one small equivalence case. The update-by-update equivalence of every rule, the archives of
``torchrun -m sim run`` and a killed rank's resume are in test_distributed_runs.py (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from sim import Network, preset
from sim.distributed import SINGLE, Group, first_host, join, launch_from_env
from sim.errors import ConfigError, DataError, DistributedError, NonFiniteError
from sim.rules.registry import specs
from sim.schedule import NoiseFloor, Scheduler
from sim.step_options import BatchPart

from . import distributed_worker as worker

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}


# ----- the launch ---------------------------------------------------------------------------------------------------
def test_launch_from_torchrun_and_srun_variables():
    launch = launch_from_env(TORCHRUN)
    assert (launch.rank, launch.world, launch.local_rank, launch.launcher) == (1, 4, 1, "torchrun")
    assert (launch.master_addr, launch.master_port) == ("n1", 29500)
    srun = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
            "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_NTASKS": "16"}
    launch = launch_from_env(srun)
    assert (launch.rank, launch.world, launch.local_rank, launch.launcher) == (5, 16, 1, "srun")
    assert launch.master_addr == "gpu007" and 20000 <= launch.master_port < 60000
    assert launch_from_env({**srun, "SLURM_PROCID": "0"}).master_port == launch.master_port  # every task agrees
    given = launch_from_env({**srun, "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (given.master_addr, given.master_port) == ("h", 1234)
    # torchrun inside an srun step (one torchrun per node): torchrun's variables win
    assert launch_from_env({**srun, **TORCHRUN}).launcher == "torchrun"


def test_a_batch_script_and_a_plain_shell_are_one_process():
    # sbatch sets SLURM_PROCID and SLURM_NTASKS for the batch script itself: not a launch of several processes
    assert launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}).world == 1
    assert launch_from_env({}).world == 1
    assert launch_from_env({"RANK": "3"}).world == 1  # one of torchrun's names alone is not a launch
    with join("cpu", env={}) as group:
        assert group is SINGLE


@pytest.mark.parametrize("env, match", [
    ({**TORCHRUN, "WORLD_SIZE": "four"}, "WORLD_SIZE='four' is not a non-negative integer"),
    ({**TORCHRUN, "RANK": "4"}, "rank must be below the number of processes"),
    ({"SLURM_PROCID": "-1", "SLURM_STEP_NUM_TASKS": "2"}, "SLURM_PROCID='-1'"),
])
def test_malformed_launch_variables_are_named(env, match):
    with pytest.raises(ConfigError, match=match):
        launch_from_env(env)


@pytest.mark.parametrize("nodelist, host", [("node1", "node1"), ("node[03-05,9],gpu1", "node03"),
                                            ("a1,b[2-3]", "a1"), ("rack[2-3]-n[10-11]", "rack2-n10")])
def test_first_host_of_a_slurm_host_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize("device, match", [
    ("cuda:1", "every process uses its own GPU, cuda:LOCAL_RANK; give the device as cuda"),
    ("cuda", "CUDA is not available here"),
    ("meta", "trains on cpu \\(gloo\\) or cuda \\(NCCL\\)"),
])
def test_a_device_that_does_not_fit_the_launch_is_refused(device, match):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=match):
        with join(device, env=TORCHRUN):
            pass


def test_each_process_takes_its_own_gpu(monkeypatch):
    """cuda:LOCAL_RANK among the machine's GPUs; cuda:0 where srun shows each task one GPU of its own; refused where
    a machine has more processes than GPUs (checked after joining, so it is one agreed error)."""
    from sim.distributed import Launch, _use_gpu

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _use_gpu(Launch(5, 8, 1, "torchrun"))
    with pytest.raises(ConfigError, match="process 2 of its machine but only 2 GPU.*--nproc-per-node 2"):
        _use_gpu(Launch(2, 8, 2, "torchrun"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _use_gpu(Launch(3, 8, 3, "srun"))
    with pytest.raises(ConfigError, match="only 1 GPU"):
        _use_gpu(Launch(3, 8, 3, "torchrun"))
    assert chosen == [1, 0]


def test_a_launch_without_a_rendezvous_is_refused():
    env = {k: v for k, v in TORCHRUN.items() if not k.startswith("MASTER")}
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT are not set"), join("cpu", env=env):
        pass


def test_batches_with_fewer_samples_than_processes_are_refused():
    group = Group(rank=0, world=4)  # no process group is needed to check sizes
    with pytest.raises(ConfigError, match="train.batch_size 3 is smaller than the 4 processes") as exc:
        group.check_batches(100, 3, drop_last=False)
    assert exc.value.key == "train.batch_size"
    with pytest.raises(ConfigError, match="last batch of every epoch holds 2 of the 98.*drop_last: true") as exc:
        group.check_batches(98, 32, drop_last=False)
    assert exc.value.key == "train.drop_last"
    group.check_batches(98, 32, drop_last=True)
    group.check_batches(100, 32, drop_last=False)  # a last batch of 4: one sample each
    with pytest.raises(ConfigError, match="last evaluation batch of the test split holds 2 of its 1026") as exc:
        group.check_batches(100, 32, drop_last=False, evaluated={"train": 100, "test": 1026}, eval_batch_size=1024)
    assert exc.value.key == "train.eval_batch_size"
    # every evaluation batch has empty parts (a streaming loader would give those processes no batch at all)
    with pytest.raises(ConfigError, match="train.eval_batch_size 2 is smaller than the 4 processes") as exc:
        group.check_batches(100, 32, drop_last=False, evaluated={"train": 8, "test": 8}, eval_batch_size=2)
    assert exc.value.key == "train.eval_batch_size"
    SINGLE.check_batches(1, 32, drop_last=False, evaluated={"test": 8}, eval_batch_size=2, skips_bad_images=True)


def test_skipping_bad_images_is_refused_in_a_data_parallel_run():
    """A process whose part of a batch is all undecodable files would skip the batch alone and fall out of step."""
    with pytest.raises(ConfigError, match="on_bad_image 'skip' cannot be used in a data-parallel run") as exc:
        Group(rank=0, world=2).check_batches(100, 32, drop_last=False, skips_bad_images=True)
    assert exc.value.key == "data.on_bad_image"


def test_one_process_is_inert():
    """With one process nothing is exchanged and nothing changes: a failure passes through as it is."""
    with pytest.raises(DataError, match="x") as exc, SINGLE.agree("a section"):
        raise DataError("x")
    assert not exc.value.reported_elsewhere
    items = [1, 2]
    assert SINGLE.each(items, "reading") is items and SINGLE.share({"a": 1}, "sharing") == {"a": 1}
    t = torch.ones(2)
    SINGLE.sum_([t])
    assert t.tolist() == [1.0, 1.0] and SINGLE.least(3, "least") == 3 and SINGLE.share_checkpoint(None) is None


# ----- a batch in parts (one process) -------------------------------------------------------------------------------
def test_parts_of_a_batch_add_up_to_the_batch_step_for_every_rule(one_thread):
    """What each process of a data-parallel step computes: a part of the batch, its noise cut from the whole
    batch's draw. The parts' raw updates (and learned feedback updates, and reconstruction-loss shares) add up to the
    whole batch's, and every part leaves the noise generator where the whole batch does, for every rule."""
    for rule in specs():
        net = Network(preset("digits_shallow", rule, dtype="float64", seed=1))
        sched = Scheduler(net, noise=NoiseFloor(activity_std=0.01, message_std=0.001), seed=2)
        g = torch.Generator().manual_seed(0)
        x = torch.rand((11, *net.config.input_shape), generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (11,), generator=g)
        before = sched.generator.get_state()
        whole = sched.compute(x, y)
        whole_sums = [t.clone() for r in net.rules for t in r.batch_sums()]
        after = sched.generator.get_state()
        totals, sums = None, None
        for chunk in torch.arange(11).tensor_split(3):
            part = BatchPart(int(chunk[0]), int(chunk[-1]) + 1, 11)
            sched.generator.set_state(before)
            result = sched.compute(x[chunk], y[chunk], part)
            assert torch.equal(sched.generator.get_state(), after), rule
            assert result.part == part and result.batch_size == 11
            grads = [g for upd in (*result.updates, *result.feedback_updates) for g in upd.values()] + [result.loss]
            shares = [t.clone() for r in net.rules for t in r.batch_sums()]
            totals = grads if totals is None else [a + b for a, b in zip(totals, grads)]
            sums = shares if sums is None else [a + b for a, b in zip(sums, shares)]
        expected = [g for upd in (*whole.updates, *whole.feedback_updates) for g in upd.values()] + [whole.loss]
        assert len(totals) == len(expected)
        for got, want in zip(totals, expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12 * float(want.abs().max()) + 1e-300)
        for got, want in zip(sums, whole_sums):  # dtp, lgp: the reconstruction loss, a mean over the batch
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        assert (len(whole_sums) > 0) == (rule in ("dtp", "lgp")), rule


# ----- two processes ------------------------------------------------------------------------------------------------
def test_two_processes_agree_on_every_failure_and_sum_a_step(tmp_path):
    """One spawned group of two (gloo): a failure on either rank, or both, raises one error on both, rank 0's
    printable and rank 1's marked as reported by rank 0; reading batches stops both at the same item; parts,
    sums, shared plans and checkpoints; and one small case (gp with activity and message noise, a short last batch
    split 5/4) whose every step's raw updates equal the single-process step's."""
    tiny = worker.case("gp", "digits_shallow", "gp", batches=(9, 9), seed=4)
    outs = worker.spawn(worker.protocol_and_case, (tiny,), str(tmp_path / "out"))
    r0, r1 = outs
    # a NaN on rank 1: the same NonFiniteError (step, layer) on both, so both stop or retry together
    for rank, o in enumerate((r0["nonfinite"], r1["nonfinite"])):
        assert o["error"] == "NonFiniteError" and o["step"] == 5 and o["layer"] == "dense2"
        assert o["reported_elsewhere"] == (rank == 1)
    # a bad image on rank 1: its own error there (not printed), named with the process on rank 0 (printed)
    assert r1["data"]["error"] == "DataError" and r1["data"]["reported_elsewhere"]
    assert r0["data"]["error"] == "DistributedError" and not r0["data"]["reported_elsewhere"]
    assert "cannot decode image /data/x.JPEG (process 1 of 2" in r0["data"]["message"]
    # both failed: the lowest rank's error, everywhere
    assert r0["both"]["message"] == "rank 0's problem" and "rank 0's problem (process 0 of 2" in r1["both"]["message"]
    # a bug on rank 0: its traceback there, one line naming it on rank 1
    assert r0["bug"]["error"] == "TypeError" and "TypeError: a bug (its traceback" in r1["bug"]["message"]
    assert r0["none"] == r1["none"] == {"value": "passed"}
    assert all("out of step" in o["out_of_step"]["message"] for o in outs)
    assert r0["seen"] == r1["seen"] == [0, 1] and r0["reading"]["error"] == "DistributedError"
    assert r0["part"]["value"] == (0, 13, 25) and r1["part"]["value"] == (13, 25, 25)
    assert r0["share"] == r1["share"] == {"value": {"plan": [1, 2]}}
    assert r0["least"] == r1["least"] == {"value": 3}
    assert r0["sum"].tolist() == r1["sum"].tolist() == [0.0, 3.0, 6.0]
    assert r1["checkpoint"]["step"] == 9 and torch.equal(r1["checkpoint"]["w"], torch.eye(2))
    assert r0["no_checkpoint"] and r1["no_checkpoint"]
    # the small equivalence case: update by update, and the state after it
    single = worker.steps(tiny)
    assert worst_difference(single, r0["case"]) < 1e-10
    assert worst_difference(single, r1["case"]) < 1e-10


def worst_difference(a: dict, b: dict) -> float:
    """The largest difference between two runs' records (:func:`worker.steps`), each tensor's relative to its
    largest entry: raw updates step by step, losses, BP's reference, the final network and Adam state."""
    pairs = [(x, y) for sa, sb in zip(a["updates"], b["updates"]) for x, y in zip(sa, sb)]
    pairs += list(zip(a["loss"], b["loss"])) + list(zip(a["reference"], b["reference"]))
    pairs += [(a["network"][k], b["network"][k]) for k in a["network"]] + list(zip(a["adam"], b["adam"]))
    assert len(a["updates"]) == len(b["updates"]) and len(a["network"]) == len(b["network"])
    worst = 0.0
    for x, y in pairs:
        assert x.shape == y.shape and x.dtype == y.dtype
        scale = float(x.abs().max()) if x.numel() else 0.0
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    angles = [abs(p - q) for p, q in zip(a["angles"], b["angles"]) if not (math.isnan(p) and math.isnan(q))]
    assert max(angles, default=0.0) < 1e-6
    return worst


def test_marked_errors_are_printed_by_rank_0_only(capsys, monkeypatch):
    """The command line prints an error every process raised once: rank 0's; the others end with status 2."""
    import sim.commands.run as run_command
    from sim.cli import main

    def fails(args):
        exc = NonFiniteError("non-finite loss at step 3")
        exc.reported_elsewhere = True
        raise exc

    monkeypatch.setattr(run_command, "main", fails)
    assert main(["run", "x.yaml", "--out", "x.zarr"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(run_command, "main", lambda args: (_ for _ in ()).throw(DistributedError("lost")))
    assert main(["run", "x.yaml", "--out", "x.zarr"]) == 2
    assert capsys.readouterr().err == "error: lost\n"

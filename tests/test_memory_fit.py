"""Part 5 of issue 17: a per-process batch that does not fit the CUDA device is refused before the first step, with
the memory needed and free and the largest batch that fits (sim.memory.check_batch_fits). The arithmetic and the
message are checked here with an injected peak function and free memory; on a CPU nothing is measured or said."""

from __future__ import annotations

import pytest

from sim import memory
from sim.config import load_config
from sim.errors import ConfigError
from sim.memory import FIT_MARGIN, PROBE_BATCH, batch_fit, check_batch_fits

MIB = 2**20


def linear(fixed_mib: float, per_sample_mib: float, calls: list | None = None):
    """A peak function ``fixed + per_sample * B`` (MiB), recording the probe batches it is asked for."""
    def peak_at(b: int) -> int:
        if calls is not None:
            calls.append(b)
        return int((fixed_mib + per_sample_mib * b) * MIB)
    return peak_at


def test_the_linear_model_predicts_the_batch_and_the_largest_that_fits():
    calls = []
    fit = batch_fit(linear(100, 10, calls), 256, 1024 * MIB)
    assert calls == [PROBE_BATCH // 2, PROBE_BATCH]  # small probes only
    assert fit.fixed == pytest.approx(100 * MIB) and fit.per_sample == pytest.approx(10 * MIB)
    assert fit.need == pytest.approx((100 + 2560) * MIB) and not fit.fits
    assert fit.largest == int((FIT_MARGIN * 1024 - 100) // 10)  # 82
    assert batch_fit(linear(100, 10), fit.largest, 1024 * MIB).fits
    assert not batch_fit(linear(100, 10), fit.largest + 1, 1024 * MIB).fits


def test_a_small_batch_is_measured_directly():
    calls = []
    fit = batch_fit(linear(50, 4, calls), 3, 10**12)
    assert calls == [1, 3] and fit.need == pytest.approx((50 + 12) * MIB) and fit.fits
    calls = []
    one = batch_fit(linear(50, 4, calls), 1, 10**12)
    assert calls == [1] and one.per_sample == pytest.approx(54 * MIB)  # one probe: the whole peak per sample


def test_a_batch_that_does_not_fit_is_refused_naming_the_key_the_memory_and_the_largest_batch(tiny_config):
    cfg = load_config(tiny_config(train={"batch_size": 256, "device": "cuda"}))
    peak = (lambda kind, b: linear(100, 10 if kind == "train" else 0.1)(b))
    with pytest.raises(ConfigError) as info:
        check_batch_fits(cfg, available=1024 * MIB, peak=peak)
    msg = str(info.value)
    assert info.value.key == "train.batch_size"
    assert msg.startswith("train.batch_size: 256 samples per process do not fit on cuda: a training step would need "
                          "about 2.6 GiB")
    assert "but 1 GiB is free there" in msg and "the largest batch that fits is about 82" in msg
    # 4 processes compute 64 samples each: that fits
    check_batch_fits(cfg, processes=4, available=1024 * MIB, peak=peak)


def test_a_data_parallel_run_checks_each_process_share_and_suggests_the_global_batch(tiny_config):
    cfg = load_config(tiny_config(train={"batch_size": 1024, "eval_batch_size": 1024, "device": "cuda"}))
    asked = []

    def peak(kind, b):
        asked.append((kind, b))
        return linear(100, 10 if kind == "train" else 1)(b)

    with pytest.raises(ConfigError) as info:  # 1024 / 8 = 128 samples per process: 1380 MiB of a 1 GiB device
        check_batch_fits(cfg, processes=8, available=1024 * MIB, peak=peak)
    msg = str(info.value)
    assert info.value.key == "train.batch_size" and msg.startswith("train.batch_size: 128 samples per process")
    # 82 per process fit (as above), so the global batch to set is 8 x 82
    assert "the largest batch that fits is about 656 (8 processes share each batch): set it to 656 or less" in msg
    # the evaluation too is each process's share: 1024 / 8 = 128 samples need 228 MiB, which fits
    cfg = load_config(tiny_config(train={"batch_size": 256, "eval_batch_size": 1024, "device": "cuda"}))
    asked.clear()
    check_batch_fits(cfg, processes=8, available=1024 * MIB, peak=peak)
    assert max(b for kind, b in asked if kind == "eval") <= 128


def test_the_evaluation_batch_is_checked_too(tiny_config):
    cfg = load_config(tiny_config(train={"batch_size": 32, "eval_batch_size": 1024, "device": "cuda"}))
    asked = []

    def peak(kind, b):
        asked.append(kind)
        return linear(10, 1 if kind == "train" else 3)(b)

    with pytest.raises(ConfigError, match=r"^train.eval_batch_size: 1024 samples .* an evaluation pass") as info:
        check_batch_fits(cfg, available=2048 * MIB, peak=peak)
    assert info.value.key == "train.eval_batch_size"
    assert asked[:2] == ["train", "train"]  # the step first: its Adam moments stay for the evaluation


def test_not_even_one_sample_fits(tiny_config):
    cfg = load_config(tiny_config(train={"device": "cuda"}))
    with pytest.raises(ConfigError, match="not even a batch of 1 fits"):
        check_batch_fits(cfg, available=100 * MIB, peak=lambda kind, b: linear(200, 1)(b))


def test_on_a_cpu_nothing_is_measured_or_said(tiny_config, monkeypatch):
    monkeypatch.setattr(memory, "_measured", lambda *a: pytest.fail("measured on a CPU"))
    check_batch_fits(load_config(tiny_config(train={"batch_size": 10**9})))

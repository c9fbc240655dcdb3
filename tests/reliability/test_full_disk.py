"""Disk full and odd output paths (docs/reliability.md; issue 14 part 4): on a real small filesystem (a tmpfs mount,
skipped where mounting is not permitted) and with injected errors, every write path ends in one ``error:`` line (or,
for the log file, one ``warning:`` line), never a traceback, and what was written before is intact."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
import yaml

from sim.archive import open_run
from sim.cli import main as sim_main
from tests.conftest import TINY
from tests.faultinject import archive_differences, run_cli


def _mount(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root and "
                    "mount permission")


def _remount(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


@pytest.fixture
def small_fs(tmp_path):
    """``mount(size) -> folder``: a fresh tmpfs of ``size`` at a folder under tmp_path, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str, name: str = "mnt") -> Path:
        folder = tmp_path / name
        _mount(folder, size)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config) -> Path:
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert run_cli(["run", str(config), "--out", str(store), "--quiet"]) == 0
    return store


# sizes from "the store's first file does not fit" to "only the last checkpoint does not fit"; two in the default
# run (the store's creation with the log file's close, and a checkpoint's torch.save), the sweep marked slow
SIZES = [size if size == "700k" else pytest.param(size, marks=pytest.mark.slow)
         for size in ("16k", "48k", "96k", "160k", "240k", "360k", "520k", "700k", "900k")]


@pytest.mark.parametrize("size", SIZES)
def test_a_real_full_disk_is_one_error_line_and_resume_completes_once_fixed(small_fs, config, reference, size,
                                                                            tmp_path):
    mnt = small_fs(size)
    store, output = mnt / "run.zarr", tmp_path / "out.txt"
    code = run_cli(["run", str(config), "--out", str(store), "--quiet"], output=output)
    text = output.read_text()
    assert "Traceback" not in text and "Logging error" not in text, text
    assert code in (0, 2), text
    if code == 2:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0] and str(mnt) in errors[0], text
        assert "--resume" in errors[0]
    # once there is space, --resume continues from what was left and ends with the uninterrupted run's archive
    _remount(mnt, "8m")
    output2 = tmp_path / "out2.txt"
    assert run_cli(["run", str(config), "--out", str(store), "--resume", "--quiet"], output=output2) == 0, \
        output2.read_text()
    assert archive_differences(reference, store) == []


def test_a_log_file_on_a_full_disk_is_one_warning_and_the_run_completes(small_fs, config, reference, tmp_path):
    logs = small_fs("4k", "logs")
    (logs / "filler").write_bytes(b"x" * 4096 * 1)  # nothing left for the log's lines
    store, output = tmp_path / "run.zarr", tmp_path / "out.txt"
    code = run_cli(["run", str(config), "--out", str(store), "--quiet", "--log", str(logs / "run.log")],
                   output=output)
    text = output.read_text()
    assert code == 0 and "Traceback" not in text and "Logging error" not in text, text
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "log file" in warnings[0] and "No space left on device" in warnings[0]
    assert archive_differences(reference, store) == []


def test_publish_on_a_full_disk_leaves_no_published_store(small_fs, config, tmp_path):
    mnt = small_fs("240k")
    store, output = mnt / "run.zarr", tmp_path / "out.txt"
    assert run_cli(["run", str(config), "--out", str(store), "--publish", "--quiet"], output=output) == 2
    assert "Traceback" not in output.read_text()
    assert not store.exists()


def test_torch_save_runtime_error_becomes_the_documented_message(tmp_path, monkeypatch, config, capsys):
    """torch.save reports a failed write as RuntimeError('unexpected pos'), not OSError: with space left it is named
    as torch.save's failure; the earlier checkpoint stays."""
    import torch

    from sim import checkpoint as ckpt_io

    store = tmp_path / "run.zarr"
    real = torch.save
    calls = {"n": 0}

    def failing(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    assert sim_main(["run", str(config), "--out", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the checkpoint {ckpt_io.checkpoint_path(store)}: torch.save failed")
    assert ckpt_io.load(store).epochs_done == 1
    assert sorted(p.name for p in ckpt_io.checkpoint_path(store).parent.iterdir()) == ["last.pt", "manifest.json"]


def test_out_dot_in_an_empty_folder(tmp_path, monkeypatch, config, reference, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert sim_main(["run", str(config), "--out", ".", "--quiet"]) == 0
    assert archive_differences(reference, folder) == []
    assert (tmp_path / ".empty.lock").is_file() and (tmp_path / "empty.log").is_file()
    assert sim_main(["run", str(config), "--out", ".", "--quiet"]) == 2  # exists: --resume or --overwrite
    assert "already exists" in capsys.readouterr().err
    assert sim_main(["run", str(config), "--out", ".", "--resume", "--quiet"]) == 0


def test_out_dot_in_a_folder_left_by_a_workflow(tmp_path, monkeypatch, config, reference):
    folder = tmp_path / "made"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "sub" / "zarr.json.abc.partial").write_text("")
    monkeypatch.chdir(folder)
    assert sim_main(["run", str(config), "--out", ".", "--quiet"]) == 0
    assert folder.is_dir() and not (folder / "sub").exists()
    assert archive_differences(reference, folder) == []


def test_out_slash_is_refused(config, capsys):
    assert sim_main(["run", str(config), "--out", "/", "--quiet"]) == 2
    assert "cannot hold a run store" in capsys.readouterr().err


def test_out_on_an_empty_mount_point(small_fs, config, reference, capsys):
    mnt = small_fs("8m")
    assert sim_main(["run", str(config), "--out", str(mnt), "--quiet"]) == 0
    assert archive_differences(reference, mnt) == []
    # replacing it would need to rename the mount point aside: refused with one line, the store untouched
    assert sim_main(["run", str(config), "--out", str(mnt), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot replace the run store" in err and "mount point" in err
    assert open_run(mnt).attrs["complete"] is True


def test_publish_onto_an_empty_mount_point_is_one_error_line(small_fs, config, capsys):
    mnt = small_fs("8m")
    assert sim_main(["run", str(config), "--out", str(mnt), "--publish", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot publish the run store {mnt}") and "Traceback" not in err
    assert open_run(Path(str(mnt) + ".partial")).attrs["complete"] is True  # the finished run is kept

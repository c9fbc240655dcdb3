"""GPU leasing: each training process takes one free GPU for itself, before CUDA starts (docs/workflow.md).

``snakemake --resources gpu=N`` only caps how many GPU jobs run at once; it never says *which* GPU a job should use,
so N jobs started together would all land on ``cuda:0``. Each job therefore leases a device itself::

    from sim.gpu import lease_gpu
    with lease_gpu(timeout=600) as lease:     # before anything touches torch.cuda
        run(cfg, out, device=lease.device)    # 'cuda:0' (the leased GPU, alone in CUDA_VISIBLE_DEVICES) or 'cpu'

How a lease works:

* **The pool** of candidate devices is, in this order: ``GAITSIM_GPU_POOL`` (comma-separated ids, e.g. ``0,1,2,3``;
  empty = no GPU; injectable for tests), else the entries of an existing ``CUDA_VISIBLE_DEVICES`` (we lease among
  those only), else the GPUs ``nvidia-smi -L`` lists. None of these initialises CUDA.
* **One identity per GPU**: a GPU named by index (``0``) and by UUID (``GPU-8c1f...``, or a unique prefix, as
  CUDA accepts) is one device: ids are normalised to the UUID ``nvidia-smi -L`` lists before the lock file is named,
  so two jobs naming one GPU in two ways never both get it. (Without ``nvidia-smi`` ids are taken as given.)
* **A cluster allocation is used as is**: inside a SLURM job (``SLURM_JOB_ID`` set) that was given GPUs
  (``CUDA_VISIBLE_DEVICES`` set by SLURM), the allocation is the job's alone; nothing is locked or changed.
* **One lock file per device** in the lock folder (``GAITSIM_GPU_LOCK_DIR``, default ``$XDG_RUNTIME_DIR/gaitsim-gpu-
  locks`` or ``/tmp/gaitsim-gpu-locks``), taken with ``fcntl.flock(LOCK_EX | LOCK_NB)`` and held for the life of the
  process. The kernel drops the lock when the descriptor closes, so a process that dies, even by SIGKILL, frees its
  GPU; there is no stale-lock cleanup to get wrong. The lock folder may be shared by every user of the machine
  (world-writable with the sticky bit, like ``/tmp``), so nothing in it is trusted: lock files are opened with
  ``O_NOFOLLOW`` (a symlink planted at a lock path is refused, never followed), a lock path that is not a regular
  file with one link is refused, a lock file is written to (the holder's pid) only when it is the caller's own, and a
  folder that others may write to without the sticky bit (so they could swap lock files) is refused. A lock file
  deleted or replaced while it was being taken is noticed (its inode is compared after ``flock``) and taken again;
  :meth:`Lease.verify` notices one deleted while held and re-creates it (``python -m sim lease`` checks every
  second while its command runs). The descriptor is close-on-exec (commands started with ``exec``
  do not inherit it); processes *forked* from the holder (e.g. DataLoader workers) share it, so the GPU stays leased
  while any of them lives.
* **CUDA_VISIBLE_DEVICES is set to the leased device** before torch initialises CUDA, so the process sees exactly
  one GPU, ``cuda:0``. If CUDA is already initialised in this process the lease is refused (the setting would be
  ignored and the process would silently share GPU 0).
* **No nested leases**: a process that holds a lease that set its ``CUDA_VISIBLE_DEVICES``, or a child started
  under one (``GAITSIM_GPU_LEASE``, set by the holder), is refused a second lease at once (it would otherwise wait
  the whole timeout for the lock its own parent holds): it already runs on its leased GPU, ``cuda:0``.
* **No GPU, no wait**: an empty pool gives a CPU lease (``device == 'cpu'``) unless ``require_gpu`` is set. When every
  GPU is leased, ``lease_gpu`` polls until one is freed or ``timeout`` seconds pass (then ``GpuLeaseTimeout``, or
  the CPU with ``fallback_cpu=True``).

The command-line twin is ``python -m sim lease -- COMMAND ...`` (:mod:`sim.commands.lease`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sim.errors import GaitsimError

POOL_ENV = "GAITSIM_GPU_POOL"
LOCK_DIR_ENV = "GAITSIM_GPU_LOCK_DIR"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
#: set by a lease that pins a process (and its children) to a GPU: ``PID:DEVICE``; a lease asked for under it is
#: refused at once
HELD_ENV = "GAITSIM_GPU_LEASE"


class GpuLeaseError(GaitsimError, RuntimeError):
    """A GPU lease that cannot be taken as asked (no GPU where one is required, CUDA already initialised)."""


class GpuLeaseTimeout(GpuLeaseError, TimeoutError):
    """Every GPU of the pool stayed leased for the whole timeout."""


# ----- the pool -----------------------------------------------------------------------------------------------------
def _split_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _nvidia_smi_list() -> list[tuple[str, str | None]]:
    """``(index, UUID or None)`` of every GPU ``nvidia-smi -L`` lists (``GPU 0: NVIDIA H100 ... (UUID: GPU-...)``);
    [] without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^GPU (\d+):[^\n]*?(?:\(UUID: ([^)\s]+)\))?[ \t]*$", out.stdout, flags=re.MULTILINE)]


def _nvidia_smi_ids() -> list[str]:
    """GPU indices listed by ``nvidia-smi -L``; [] without it."""
    return [index for index, _ in _nvidia_smi_list()]


def canonical_ids(ids: list[str], gpus: list[tuple[str, str | None]] | None = None) -> list[str]:
    """One identity per device: each id (an index, a UUID or a unique UUID prefix, as ``CUDA_VISIBLE_DEVICES``
    takes them) as the full UUID ``nvidia-smi -L`` lists for it (``gpus``, read when not given); an id it does not
    resolve is kept as given."""
    gpus = _nvidia_smi_list() if gpus is None else gpus
    by_index = {index: uuid for index, uuid in gpus if uuid}
    uuids = [uuid for _, uuid in gpus if uuid]
    out = []
    for device_id in ids:
        if device_id in by_index:
            out.append(by_index[device_id])
            continue
        matches = [u for u in uuids if u.startswith(device_id)] if not device_id.isdigit() else []
        out.append(matches[0] if len(matches) == 1 else device_id)
    return out


def in_cluster_allocation(env: dict[str, str] | None = None) -> bool:
    """True inside a SLURM job whose GPUs SLURM chose (``SLURM_JOB_ID`` and ``CUDA_VISIBLE_DEVICES`` both set)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID")) and bool(_split_ids(env.get(VISIBLE_ENV, "")))


def gpu_pool(env: dict[str, str] | None = None) -> list[str]:
    """The device ids a lease chooses among (strings as ``CUDA_VISIBLE_DEVICES`` takes them: indices or UUIDs),
    without initialising CUDA: ``GAITSIM_GPU_POOL``, else ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``.

    ``CUDA_VISIBLE_DEVICES`` set but empty, or ``-1``, means no GPU (as CUDA reads it).
    """
    env = os.environ if env is None else env
    if POOL_ENV in env:
        return _split_ids(env[POOL_ENV])
    if VISIBLE_ENV in env:
        ids = _split_ids(env[VISIBLE_ENV])
        return [] if ids[:1] == ["-1"] else ids
    return _nvidia_smi_ids()


def lock_dir(env: dict[str, str] | None = None) -> Path:
    """The folder of the per-device lock files: ``GAITSIM_GPU_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/gaitsim-gpu-locks``,
    else ``/tmp/gaitsim-gpu-locks``. Every process that shares the GPUs must use the same folder."""
    env = os.environ if env is None else env
    if env.get(LOCK_DIR_ENV):
        return Path(env[LOCK_DIR_ENV])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "gaitsim-gpu-locks"
    return Path("/tmp/gaitsim-gpu-locks")


def _lock_name(device_id: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device_id) + ".lock"


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch build cannot have initialised CUDA
        return False


# ----- the lease ----------------------------------------------------------------------------------------------------
@dataclass
class Lease:
    """A leased GPU (or the CPU). Use as a context manager, or call :meth:`release`; the kernel frees the lock when
    the process ends in any case."""

    device: str
    """Torch device to run on: 'cuda:0' (the leased GPU, the only one visible) or 'cpu'."""
    physical_id: str | None
    """The id of the GPU as the machine knows it (index or UUID); None for the CPU."""
    lock_path: Path | None = None
    """The lock file held (None for the CPU and for a cluster allocation)."""
    source: str = "cpu"
    """Where the device came from: 'pool' (locked), 'cluster' (SLURM allocation, used as is) or 'cpu'."""
    key: str | None = None
    """The device's identity the lock file is named after (its UUID where ``nvidia-smi`` tells it)."""
    _fd: int | None = field(default=None, repr=False)
    _marked: bool = field(default=False, repr=False)

    @property
    def fd(self) -> int | None:
        """The locked file descriptor (pass it to a child with ``pass_fds`` to keep the lease while it runs)."""
        return self._fd

    @property
    def fds(self) -> tuple[int, ...]:
        """:attr:`fd` as a tuple, empty where nothing is locked (as :attr:`Leases.fds`)."""
        return () if self._fd is None else (self._fd,)

    @property
    def env(self) -> dict[str, str]:
        """Environment settings that pin a child process to this device."""
        if self.physical_id is None:
            return {VISIBLE_ENV: ""}
        return {VISIBLE_ENV: os.environ.get(VISIBLE_ENV, "") if self.source == "cluster" else self.physical_id}

    def verify(self) -> str | None:
        """Check that the lock file is still the one this lease holds; None if so (or nothing is locked).

        If the lock file was deleted or replaced (by hand, or a cleaner of the lock folder), another job could lock
        a new file at the same path and take the same GPU: the lease re-creates and locks it, and returns a message
        saying so; if another process took it meanwhile, the message says the GPU may now be shared."""
        if self._fd is None or self.lock_path is None:
            return None
        if _same_file(self._fd, self.lock_path):
            return None
        fd = _try_lock(self.lock_path)
        if fd is None:
            return (f"the lock file {self.lock_path} of GPU {self.physical_id} was deleted or replaced while leased, "
                    "and another process has locked the new one: the GPU may now be shared by two jobs. Do not "
                    "delete files in the lock folder while jobs run")
        old, self._fd = self._fd, fd
        _held.pop(old, None)
        _held[fd] = self.physical_id or ""
        os.close(old)
        return (f"the lock file {self.lock_path} of GPU {self.physical_id} was deleted or replaced while leased; "
                "re-created and locked it again")

    def release(self) -> None:
        """Give the GPU back (idempotent)."""
        if self._marked:
            self._marked = False
            if os.environ.get(HELD_ENV, "").startswith(f"{os.getpid()}:"):
                del os.environ[HELD_ENV]
        if self._fd is not None:
            _held.pop(self._fd, None)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a dropped Lease object must not keep a descriptor open forever
        try:
            self.release()
        except Exception:  # noqa: BLE001
            pass


#: descriptors of the leases this process holds -> device id (to refuse a nested lease at once)
_held: dict[int, str] = {}


def _open_lock(path: Path) -> int:
    """Open (creating it if needed) the lock file ``path`` without following a link, and check that it is a
    regular file with one link; GpuLeaseError otherwise (the folder is shared: anything could be planted there)."""
    flags = os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO cannot hang us
    try:
        try:
            fd = os.open(path, flags | os.O_RDWR, 0o644)
        except PermissionError:  # another user's lock file: flock works on a read-only descriptor too
            fd = os.open(path, (flags & ~os.O_CREAT) | os.O_RDONLY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise GpuLeaseError(f"the GPU lock path {path} is a symbolic link; refused, not followed (someone may "
                                "have planted it). Remove it, or set GAITSIM_GPU_LOCK_DIR to a folder of "
                                "yours") from None
        raise GpuLeaseError(f"cannot open the GPU lock file {path}: {exc.strerror}; set GAITSIM_GPU_LOCK_DIR to a "
                            "writable folder") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(st.st_mode) else f"has {st.st_nlink} hard links"
        raise GpuLeaseError(f"the GPU lock path {path} {what}; refused (a lock file is a regular file with one "
                            "link). Remove it, or set GAITSIM_GPU_LOCK_DIR to a folder of yours")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not deleted, not replaced)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino) and held.st_nlink > 0


def _try_lock(path: Path) -> int | None:
    for _ in range(8):  # the file was deleted or replaced between open and flock: take the new one
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        if _same_file(fd, path):
            break
        os.close(fd)
    else:
        return None
    if os.fstat(fd).st_uid == os.getuid():
        try:  # who holds it, for `python -m sim lease --status` and for people reading the folder
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
    return fd


def _ensure_dir(path: Path) -> None:
    """Create the lock folder (shared by every user of the machine: world-writable and sticky, like /tmp), and
    refuse one that is not a folder or that others may write to without the sticky bit."""
    if not path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o1777)
        except OSError:
            pass
    try:
        st = os.stat(path)
        link = os.lstat(path)
    except OSError as exc:
        raise GpuLeaseError(f"cannot create the GPU lock folder {path}: {exc.strerror}; set GAITSIM_GPU_LOCK_DIR "
                            "to a writable folder") from None
    if not stat.S_ISDIR(st.st_mode):
        raise GpuLeaseError(f"the GPU lock folder {path} is not a folder; set GAITSIM_GPU_LOCK_DIR to a folder")
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.getuid()):
        raise GpuLeaseError(f"the GPU lock folder {path} is a symbolic link of another user; refused. Set "
                            "GAITSIM_GPU_LOCK_DIR to a folder of yours")
    others_write = st.st_mode & stat.S_IWOTH or st.st_mode & stat.S_IWGRP and st.st_uid not in (0, os.getuid())
    if others_write and not st.st_mode & stat.S_ISVTX:
        raise GpuLeaseError(f"the GPU lock folder {path} may be written by others but has no sticky bit, so anyone "
                            "could swap its lock files; `chmod +t` it, or set GAITSIM_GPU_LOCK_DIR to a folder of "
                            "yours")


def _refuse_nested(env) -> None:
    """A lease asked for by a process that holds one pinning it, or by a child started under one: refused."""
    for device_id in list(_held.values()):
        if device_id and os.environ.get(HELD_ENV) == f"{os.getpid()}:{device_id}":
            raise GpuLeaseError(f"this process already holds a lease of GPU {device_id} (CUDA_VISIBLE_DEVICES "
                                "points at it, as cuda:0); use that lease instead of taking a second one")
    marker = env.get(HELD_ENV, "")
    pid, _, device_id = marker.partition(":")
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return  # a stale marker: its holder is gone
        except PermissionError:
            pass
        raise GpuLeaseError(f"this process runs under a GPU lease already (GPU {device_id or '-'}, held by pid {pid}, "
                            f"{HELD_ENV}); it is pinned to that GPU, cuda:0: run without a second lease")


def lease_gpu(timeout: float | None = 600.0, *, require_gpu: bool = False, fallback_cpu: bool = False,
              poll: float = 0.5, set_env: bool = True, env: dict[str, str] | None = None) -> Lease:
    """Lease one GPU for this process (or the CPU where there is none); see the module docstring.

    Args:
        timeout: seconds to wait for a GPU while all are leased; None waits for ever, 0 tries once.
        require_gpu: raise :class:`GpuLeaseError` instead of returning a CPU lease when there is no GPU at all.
        fallback_cpu: when the timeout passes with every GPU leased, return a CPU lease instead of raising.
        poll: seconds between tries while waiting.
        set_env: set ``CUDA_VISIBLE_DEVICES`` of this process to the leased device (needed before CUDA starts);
            False leaves the environment alone (for launching a child with :attr:`Lease.env`).
        env: the environment to read (default ``os.environ``; for tests).

    Raises:
        GpuLeaseError: CUDA is already initialised in this process, or ``require_gpu`` and no GPU exists.
        GpuLeaseTimeout: every GPU stayed leased for ``timeout`` seconds (and not ``fallback_cpu``).
    """
    env = os.environ if env is None else env
    if in_cluster_allocation(env):
        ids = _split_ids(env[VISIBLE_ENV])
        return Lease(device="cuda:0", physical_id=",".join(ids), source="cluster")
    pool = gpu_pool(env)
    if not pool:
        if require_gpu:
            raise GpuLeaseError(
                "no GPU to lease: nvidia-smi lists none and neither GAITSIM_GPU_POOL nor CUDA_VISIBLE_DEVICES names "
                "one; run on a GPU machine, or set the study's device to cpu or auto")
        return Lease(device="cpu", physical_id=None)
    _refuse_nested(env)
    if set_env and _cuda_initialized():
        raise GpuLeaseError("CUDA is already initialised in this process, so CUDA_VISIBLE_DEVICES can no longer "
                            "choose its GPU; take the lease before anything touches torch.cuda")
    folder = lock_dir(env)
    _ensure_dir(folder)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    # start at a per-process offset so that simultaneous jobs try different devices first
    keys = canonical_ids(pool)
    unique = {key: device_id for device_id, key in reversed(list(zip(pool, keys)))}  # one entry per device
    devices = [(key, unique[key]) for key in dict.fromkeys(keys)]
    start = os.getpid() % len(devices)
    order = devices[start:] + devices[:start]
    while True:
        for key, device_id in order:
            path = folder / _lock_name(key)
            fd = _try_lock(path)
            if fd is not None:
                _held[fd] = device_id
                lease = Lease(device="cuda:0", physical_id=device_id, lock_path=path, source="pool", key=key, _fd=fd)
                if set_env:
                    os.environ[VISIBLE_ENV] = device_id
                    os.environ[HELD_ENV] = f"{os.getpid()}:{device_id}"
                    lease._marked = True
                return lease
        if deadline is not None and time.monotonic() >= deadline:
            if fallback_cpu:
                if set_env:
                    os.environ[VISIBLE_ENV] = ""
                return Lease(device="cpu", physical_id=None)
            raise GpuLeaseTimeout(
                f"all {len(pool)} GPU(s) of the pool ({','.join(pool)}) stayed leased for {timeout:g} s (locks in "
                f"{folder}); wait for running jobs, lower --resources gpu=N to the number of GPUs, or raise the "
                "lease timeout")
        time.sleep(poll)


# ----- several GPUs for one job -------------------------------------------------------------------------------------
@dataclass
class Leases:
    """Several GPUs leased together for one job, a data-parallel run with one process per GPU (docs/runs.md,
    "Several GPUs"): each locked as :func:`lease_gpu` locks one, all of them visible to the job (``cuda:0`` ..
    ``cuda:N-1``; process ``LOCAL_RANK`` k uses ``cuda:k``). Use as a context manager, or call :meth:`release`."""

    ids: list[str]
    """The GPUs as the machine knows them (indices or UUIDs); empty for the CPU."""
    source: str = "cpu"
    """'pool' (locked), 'cluster' (a SLURM allocation, used as is) or 'cpu'."""
    locks: list[Lease] = field(default_factory=list)
    """The one-GPU leases holding the lock files ('pool' only)."""

    @property
    def device(self) -> str:
        """What the job trains on: ``cuda`` (each process its own GPU) or ``cpu``."""
        return "cuda" if self.ids else "cpu"

    @property
    def physical_id(self) -> str | None:
        return ",".join(self.ids) or None

    @property
    def fds(self) -> tuple[int, ...]:
        """The locked descriptors (pass them to the child with ``pass_fds``, so the GPUs stay leased while it runs)."""
        return tuple(lease.fd for lease in self.locks if lease.fd is not None)

    @property
    def env(self) -> dict[str, str]:
        """Environment settings that give a child process exactly these GPUs."""
        return {VISIBLE_ENV: ",".join(self.ids)}

    def verify(self) -> str | None:
        """:meth:`Lease.verify` of every GPU; the problems, or None."""
        problems = [p for p in (lease.verify() for lease in self.locks) if p]
        return "; ".join(problems) or None

    def release(self) -> None:
        for lease in self.locks:
            lease.release()

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease_gpus(count: int, timeout: float | None = 600.0, *, require_gpu: bool = False, fallback_cpu: bool = False,
               poll: float = 0.5, env: dict[str, str] | None = None) -> Leases:
    """Lease ``count`` GPUs at once for a job (see :class:`Leases`): all of them or none, so two jobs waiting for
    GPUs never hold half of what each needs; the environment of this process is left alone (the job is a child:
    :attr:`Leases.env`). Inside a SLURM job with GPUs its allocation is used as is (the first ``count`` of them).

    Raises:
        GpuLeaseError: fewer GPUs than ``count`` in the pool or the allocation, or ``require_gpu`` and none at all.
        GpuLeaseTimeout: ``count`` GPUs were not free together for ``timeout`` seconds (and not ``fallback_cpu``).
    """
    env = os.environ if env is None else env
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise GpuLeaseError(f"the number of GPUs to lease must be a positive integer, got {count!r}")
    if in_cluster_allocation(env):
        ids = _split_ids(env[VISIBLE_ENV])
        if len(ids) < count:
            raise GpuLeaseError(f"this SLURM job was given {len(ids)} GPU(s) (CUDA_VISIBLE_DEVICES={','.join(ids)}) "
                                f"but the run asks for {count}; give the job {count} GPUs (sbatch --gpus={count}, the "
                                "workflow's gpu resource)")
        return Leases(ids[:count], "cluster")
    pool = gpu_pool(env)
    if not pool:
        if require_gpu:
            raise GpuLeaseError(f"no GPU to lease ({count} asked for): nvidia-smi lists none and neither "
                                "GAITSIM_GPU_POOL nor CUDA_VISIBLE_DEVICES names one; run on a GPU machine, or set "
                                "the study's device to cpu or auto")
        return Leases([])
    keys = canonical_ids(pool)
    unique = {key: device_id for device_id, key in reversed(list(zip(pool, keys)))}
    devices = [(key, unique[key]) for key in dict.fromkeys(keys)]
    if len(devices) < count:
        raise GpuLeaseError(f"the run asks for {count} GPUs but the pool has {len(devices)} ({','.join(pool)}); give "
                            f"it at most {len(devices)} (the experiment's gpus), or run it where there are more")
    _refuse_nested(env)
    folder = lock_dir(env)
    _ensure_dir(folder)
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        taken: list[Lease] = []
        for key, device_id in devices:
            path = folder / _lock_name(key)
            fd = _try_lock(path)
            if fd is not None:
                _held[fd] = device_id
                taken.append(Lease(device="cuda:0", physical_id=device_id, lock_path=path, source="pool", key=key,
                                   _fd=fd))
                if len(taken) == count:
                    return Leases([lease.physical_id for lease in taken], "pool", taken)
        for lease in taken:  # not enough free together: give these back, so another job can take what it needs
            lease.release()
        if deadline is not None and time.monotonic() >= deadline:
            if fallback_cpu:
                return Leases([])
            raise GpuLeaseTimeout(
                f"{count} of the {len(devices)} GPU(s) of the pool ({','.join(pool)}) were never free together for "
                f"{timeout:g} s (locks in {folder}); wait for running jobs, lower --resources gpu=N to the number of "
                "GPUs, or raise the lease timeout")
        time.sleep(poll)


def lease_status(env: dict[str, str] | None = None) -> list[tuple[str, int | None]]:
    """``(device id, holder pid or None)`` for every device of the pool, without taking any lease."""
    env = os.environ if env is None else env
    folder = lock_dir(env)
    out: list[tuple[str, int | None]] = []
    pool = gpu_pool(env)
    for device_id, key in zip(pool, canonical_ids(pool)):
        path = folder / _lock_name(key)
        holder = None
        if path.is_file() and not path.is_symlink():
            fd = _open_lock(path)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError:
                    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    holder = int(text) if text.isdigit() else -1
            finally:
                os.close(fd)
        out.append((device_id, holder))
    return out

"""Where and how computation runs: the device, CPU threads, and the process group under torchrun.

One vocabulary for devices everywhere (``auto``, ``cpu``, ``cuda``, ``cuda:N``; ``auto`` takes a GPU when
there is one) and one thread policy: the main process uses the cores it may run on (shared out between
the processes torchrun starts on this machine), DataLoader workers one thread each, so that no command
oversubscribes the CPU (two busy processes with two threads each on two cores run several times slower).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import signal
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fcnseg.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Runtime:
    """The device of this process and its place in the process group (one process: rank 0 of 1)."""

    device: torch.device
    threads: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """A torch device from ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, with a clear error when it is absent."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown device {name!r}; use {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {str(device)!r}; use {DEVICE_CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} was asked for but no CUDA GPU is available here; "
                              "use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} does not exist: this machine has "
                              f"{torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _first_cpu(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, str]:
    """The fields of the first processor's block of Linux's cpuinfo (empty elsewhere)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            if not line.strip():
                break  # every processor of a machine is the same model with the same flags
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    fields = _first_cpu()
    return frozenset((fields.get("flags") or fields.get("Features", "")).split())


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo", cores: bool = True) -> str:
    """The CPU's model name as Linux reports it, with its family and model numbers (a virtual machine may name
    only the vendor, e.g. ``AMD EPYC``), and (with ``cores``) the cores this process may use; what Python knows
    elsewhere. For the machine line of every measured figure."""
    fields = _first_cpu(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return f"{name}, {usable_cores()} cores" if cores else name


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or
    AMX-BF16. Elsewhere (AVX2-only CPUs) bf16 autocast is emulated and several times slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def local_processes() -> int:
    """The processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside torchrun)."""
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def default_threads() -> int:
    """The usable cores, shared out between the processes torchrun runs on this machine."""
    return max(1, usable_cores() // local_processes())


THREADS_PER_CORE = 4  # the most threads set_threads takes per usable core


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_threads`); returns the number set."""
    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be a whole number >= 1, got {threads!r}")
    most = THREADS_PER_CORE * usable_cores()
    if threads > most:  # 100000 ended in "can't start new thread" from the next thread anyone started
        raise ConfigError(f"threads {threads} is more than {THREADS_PER_CORE} per core this process may use "
                          f"({usable_cores()}), which only slows torch down: give at most {most}")
    torch.set_num_threads(threads)
    return threads


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory (up to 1 GiB) for reuse rather than return it to the system.

    A training step allocates and frees the same large activation buffers every iteration; by default
    glibc maps each one afresh and the kernel zero-fills its pages again (on CamVid training, 20% of the
    CPU time went to the system). Kept in the heap they are reused: a 150-iteration CamVid run took 14%
    less time (docs/performance.md) for 10% more peak memory, with the same weights. Set once per process,
    inherited by forked loader workers; False where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols already loaded in this process, libc's included
    except AttributeError:  # a C library without mallopt (musl, macOS)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Compute with numbers below float32's smallest normal one (about 1.2e-38) as 0 while the block runs: the
    CPU's flush-to-zero and denormals-are-zero modes, for the calling thread, where one-thread training does
    all of its arithmetic. Yields whether the CPU has the modes (x86 with SSE3 does).

    Training makes such numbers, and every operation on one takes a slow path on x86: 670284 of the 2.1 million
    averaged gradients in AdamW's state were denormal at the end of a 16000-iteration CamVid run, and an
    AdamW-like update of that state took 15.2 to 49.4 ms against 6.3 ms flushed (benchmarks/denormals.py).
    Off again after the block, torch's default.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(False)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one thread per worker, so workers never compete with the main process; Ctrl+C
    (which the terminal sends to every process of the group) is left to the main process, which stops its workers
    when it stops, and may first finish a step with their batches (:func:`fcnseg.signals.deferred_interrupt`); a
    SIGTERM stops a worker (:func:`_stop_on_sigterm`); and no traceback from a worker when the main process stops
    while it takes a batch (:func:`_quiet_on_hang_up`)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process answers Ctrl+C and stops its workers
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    sys.excepthook = _quiet_on_hang_up(sys.excepthook)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """A worker's SIGTERM handler: end its loop with KeyboardInterrupt, which torch's worker loop takes as a stop
    (exit 0).

    torch's own handler let a SIGTERM from anyone but the main process kill the worker, so SIGTERM sent to the
    whole process group (a scheduler, systemd, ``kill -- -PGID``) made the main process fail with "DataLoader
    worker ... is killed by signal: Terminated" instead of stopping as the SIGTERM it also got says (cli.py).
    torch's shutdown still ends a stuck worker with SIGTERM: this stops it too, at its next Python instruction.
    """
    raise KeyboardInterrupt


def _quiet_on_hang_up(report: Callable[..., object]) -> Callable[..., None]:
    """``report`` (an excepthook), silent for the main process hanging up on the worker's resource sharer.

    A worker hands each batch's shared memory to the main process through multiprocessing's resource sharer, a
    thread that reports any failure through ``sys.excepthook``. Ctrl+C or SIGTERM landing while the main process
    takes a batch drops that connection mid-handshake, and the worker printed a 20-line ConnectionResetError
    under ``fcnseg: terminated`` (seldom; a fresh-clone CI run caught it; tests/test_hostile_lost.py). The main process
    reports the stop; every other exception, and any from elsewhere, is still reported.
    """
    def hook(kind: type[BaseException], value: BaseException, trace: Any) -> None:
        sharer = trace is not None and Path(trace.tb_frame.f_code.co_filename).name == "resource_sharer.py"
        if not (sharer and issubclass(kind, (ConnectionError, EOFError))):
            report(kind, value, trace)
    return hook


def start(device: str | torch.device = "auto", threads: int | None = None, reproducible: bool = False) -> Runtime:
    """Set threads and pick the device; under torchrun, join the process group (NCCL on GPUs, gloo on CPUs).
    ``reproducible``: on a GPU, only kernels that compute the same bits every run (see :func:`reproducible_cuda`)."""
    threads = set_threads(threads)
    resolved = resolve_device(device)
    if reproducible and resolved.type == "cuda":
        reproducible_cuda()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(resolved, threads)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)  # one GPU per process, by local rank
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        store = _restart_store()
        own = {"store": store, "rank": rank, "world_size": world_size} if store is not None else {}
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", **own)
    return Runtime(resolved, threads, rank, world_size, local_rank)


def _restart_store() -> dist.Store | None:
    """For a group that one torchrun restarted (one machine): torchrun's store under a name of this restart's own;
    otherwise None (torch's default).

    torchrun keeps one store for all its restarts, and the addresses the killed group left in it are read by the
    restarted processes, which then fail to connect ("Connection refused") or hang: every restart failed so on
    torch 2.13 (pytorch/pytorch#135712). One torchrun restarts every process of the group together, so its
    restart count names the restart on every rank. Several machines' torchruns may count restarts differently
    (a machine that joins later starts at 0): there, run the c10d rendezvous with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, which gives each restart a new store (docs/distributed.md)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart_count() == 0:
        return None
    if os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE"):
        return None
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(minutes=30))  # as torch's own: the slowest process may take long
    return dist.PrefixStore(f"fcnseg/restart_{restart_count()}/", agent)


def reproducible_cuda() -> None:
    """Have CUDA compute the same bits every run, as the CPU does, so that a resumed training run ends with
    the uninterrupted run's weights. Without it, an H200 gave weights 6e-11 apart after a float32 resume
    (cuDNN's and cuBLAS' fastest kernels sum in a varying order); with it, identical (tests/test_gpu.py).
    The loss's own value is still summed with atomics (no deterministic kernel; its gradient does not depend
    on it), so that one warning is silenced; any other nondeterministic kernel still warns."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
    torch.use_deterministic_algorithms(True, warn_only=True)
    warnings.filterwarnings("ignore", message="nll_loss2d_forward_out_cuda_template does not have a deterministic")


def launched_rank() -> int | None:
    """This process's rank when torchrun started it in a group of several (``RANK``, ``WORLD_SIZE``), else None;
    known before the process group is joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process prints what a run prints once: a single process, or rank 0 under torchrun."""
    return launched_rank() in (None, 0)


def process_label() -> str:
    """``rank R on HOST`` under torchrun with several processes (for messages that one process of many
    prints), else empty."""
    rank = launched_rank()
    return "" if rank is None else f"rank {rank} on {socket.gethostname()}"


# How gloo and NCCL report that a peer process went away (it stopped, was killed, or its machine was lost).
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited",
              "Connection refused")


def lost_contact(error: BaseException) -> bool:
    """Whether ``error`` is this process of several under torchrun losing contact with the others: not a bug of
    its own, and the process that stopped first says why (torchrun stops or restarts the rest)."""
    if launched_rank() is None or not isinstance(error, RuntimeError):
        return False
    return isinstance(error, dist.DistError) or any(sign in str(error) for sign in _LOST_PEER)


def restart_count() -> int:
    """How many times torchrun has restarted this group of processes (``--max-restarts``); 0 on its first
    start, and outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def under_torchrun() -> bool:
    """Whether torchrun (its elastic agent) started this process: it sets ``TORCHELASTIC_RUN_ID`` for its workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launcher_id() -> str | None:
    """Who started this process under torchrun: the torchrun agent (the parent process), by machine, boot, pid
    and start time, which stay the same when the agent restarts its workers and differ between two launches
    (hashed: checkpoints that keep it do not name machines); None outside torchrun."""
    if not under_torchrun():
        return None
    parent = os.getppid()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = Path(f"/proc/{parent}/stat").read_text().rpartition(")")[2].split()[19]  # field 22: start time
    except (OSError, IndexError):  # not Linux: the pid alone
        boot = started = "?"
    return hashlib.sha256(f"{socket.gethostname()}/{boot}/{parent}/{started}".encode()).hexdigest()[:16]


def broadcast_object(obj: Any, runtime: Runtime) -> Any:
    """The main process's (rank 0's) ``obj``, on every rank (``obj`` itself in a single process)."""
    if not runtime.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not runtime.distributed:
        return [obj]
    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """``tensor`` as the main process (rank 0) holds it, on every rank, in place; returns it."""
    if runtime.distributed:
        dist.broadcast(tensor, src=0)
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all processes when a process group is running; returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def finish() -> bool:
    """Under torchrun: wait for every rank, then tear the group down (gloo can abort at exit otherwise); whether
    there was a group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False


@contextlib.contextmanager
def in_eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """``module`` (None: nothing) in eval mode inside; the submodules it was training are switched back after,
    and only those: a submodule the caller keeps in eval mode stays there (``.train(was_training)`` put every one
    in training mode). For the caller's nets: a Segmenter's, evaluate's, an export's."""
    training = [m for m in module.modules() if m.training] if module is not None else []
    for submodule in training:
        submodule.training = False  # what .eval() sets, kept to the modules it changes
    try:
        yield
    finally:
        for submodule in training:
            submodule.training = True


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for this process now: MemAvailable (and the cgroup's room, if lower); a GPU's free memory with
    the blocks PyTorch's caching allocator holds unused (the driver counts them as taken: validation after a large
    training step would have seen almost nothing free)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(int(cached), 0)
    free = _meminfo_available()
    room = _cgroup_room()
    return min(free, room) if room is not None else free


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)

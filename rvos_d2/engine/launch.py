"""Multi-process launching and DistributedDataParallel wrapping that also work without CUDA.

With CUDA, `launch` is detectron2's launch (NCCL, one process per GPU, multi-machine through
``--num-machines/--machine-rank/--dist-url``). Without CUDA, ``num_gpus_per_machine`` is read as
the number of worker processes per machine: they are spawned with the gloo backend, share the
machine's CPU cores, and the multi-machine arguments keep their meaning.

Workers exit when their launcher dies, even by SIGKILL (Linux: the parent-death signal of prctl;
elsewhere a thread that polls the parent), so none keeps training and writing checkpoints.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "create_ddp_model", "launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
_DDP_HAS_FORWARD_SYNC = (
    "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 1.0  # how often a worker without prctl checks that its launcher lives


def _set_parent_death_signal(sig: int) -> bool:
    """Asks Linux to send `sig` to this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(launcher_pid: int) -> None:
    while os.getppid() == launcher_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def exit_with_launcher(launcher_pid: int) -> None:
    """Makes this worker process end as soon as its launcher (pid `launcher_pid`) dies."""
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(launcher_pid,), daemon=True).start()
    if os.getppid() != launcher_pid:  # the launcher died before the signal was armed
        os._exit(1)


def _run_tied_to_launcher(launcher_pid: int, main_func: Callable[..., Any], *args: Any) -> Any:
    exit_with_launcher(launcher_pid)
    return main_func(*args)


def _free_local_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Runs `main_func(*args)` in `num_gpus_per_machine` processes on each of `num_machines`.

    Call it on every machine. On a machine without CUDA the processes use gloo on the CPU.
    ``dist_url="auto"`` picks a free local port (single machine only).
    """
    if torch.cuda.is_available():
        d2_launch(
            functools.partial(_run_tied_to_launcher, os.getpid(), main_func),
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1"
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url must name the main machine in a multi-machine job")
        dist_url = _free_local_url()
    logging.getLogger(__name__).info(
        f"CUDA is not available: starting {num_gpus_per_machine} CPU worker processes (gloo) "
        f"on machine {machine_rank} of {num_machines}"
    )
    mp.start_processes(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(
            main_func,
            world_size,
            num_gpus_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
            os.getpid(),
        ),
        daemon=False,
        start_method="spawn",
    )


def _create_local_process_group(num_workers_per_machine: int) -> None:
    """Creates detectron2's per-machine process group (`comm._LOCAL_PROCESS_GROUP`)."""
    if hasattr(comm, "create_local_process_group"):  # detectron2 after v0.6
        comm.create_local_process_group(num_workers_per_machine)
        return
    per_machine, rank = num_workers_per_machine, dist.get_rank()
    # new_group is collective: every rank creates the group of every machine, keeps its own.
    for machine in range(dist.get_world_size() // per_machine):
        group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
        if rank // per_machine == machine:
            comm._LOCAL_PROCESS_GROUP = group


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_workers_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
    launcher_pid: int,
) -> None:
    exit_with_launcher(launcher_pid)
    global_rank = machine_rank * num_workers_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception as err:
        raise RuntimeError(f"cannot join the process group at --dist-url {dist_url}") from err
    if "OMP_NUM_THREADS" not in os.environ:  # the workers of one machine share its cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // num_workers_per_machine))
    try:
        _create_local_process_group(num_workers_per_machine)
        comm.synchronize()
        main_func(*args)
        comm.synchronize()  # no rank tears the group down while another still talks over it
    finally:
        dist.destroy_process_group()


def create_ddp_model(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Wraps `model` in DistributedDataParallel when there are several processes.

    A model on the CPU is wrapped without ``device_ids`` (detectron2 always passes them).
    Where torch replaced ``broadcast_buffers`` by ``forward_sync_buffers``, the value is passed
    under the new name (buffers are then also synced once at construction, which is harmless).
    """
    if comm.get_world_size() > 1 and all(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("device_ids", None)
    if "broadcast_buffers" in kwargs and _DDP_HAS_FORWARD_SYNC:
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    return d2_create_ddp_model(model, **kwargs)

"""Run a function on gloo ranks in fresh processes, the same way every time (import after torch).

Why each piece is here (``tests/test_torch_ddp.py`` errored at setup in one of two whole ``tests-torch``
runs: a gloo worker died with SIGABRT, "terminate called without an active exception", i.e. a C++
``std::thread`` destroyed while still joinable, which gloo's worker and transport threads are when
their owner is torn down out of order):

* ``spawn``, never ``fork``: the pytest process has threads (OpenMP, inductor's compile workers) by the
  time these tests run, and a forked child inherits their locks, not the threads;
* a fresh file store per run (``directory``), so no port can be taken by another test or process;
* gloo bound to the loopback interface (``GLOO_SOCKET_IFNAME``) rather than to whatever the host name
  resolves to;
* an explicit shutdown: the function's objects (DDP reducers hold the process group and its pending
  work) are collected while the group is alive, the ranks meet at a barrier, the group is destroyed, and
  the child leaves with ``os._exit(0)``. A spawned child otherwise runs the interpreter's finalisation,
  whose order of C++ destructors (gloo's threads against library statics) is not fixed: that is where a
  worker can abort *after* its results were written, which is what failed the fixture. A failure in the
  function itself still raises (and is reported by ``torch.multiprocessing``).
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _loopback() -> str | None:
    """The loopback interface's name (``lo`` on Linux, ``lo0`` on macOS), if there is one."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in names if name.startswith("lo")), None)


def _entry(rank: int, fn: Callable[..., None], world: int, directory: str, args: tuple[Any, ...]) -> None:
    loopback = _loopback()
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=world)
    finished = False
    try:
        fn(rank, world, directory, *args)
        gc.collect()  # DDP reducers (in reference cycles) hold the group: free them while it is alive
        dist.barrier()
        finished = True
    finally:
        dist.destroy_process_group()
    if finished:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip the interpreter's finalisation (see the module docstring)


def run_ranks(fn: Callable[..., None], world: int, directory: str, *args: Any, timeout: float = 150.0) -> None:
    """Call ``fn(rank, world, directory, *args)`` on ``world`` gloo ranks (spawned processes); fail the test
    if a rank fails or the ranks do not finish within ``timeout`` seconds. ``fn`` must be a module-level
    function (it is pickled by reference) and writes its results under ``directory``."""
    context = mp.start_processes(
        _entry, args=(fn, world, directory, args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP workers did not finish within {timeout:g} s")

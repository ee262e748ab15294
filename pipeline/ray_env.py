"""The Ray this process runs on: a local Ray kept on loopback and telemetry-free, or a cluster's.

The job entry points call :func:`use_local_ray_env` before anything imports Ray; ``run_pipeline`` calls
:func:`init_ray`; tests, benchmarks and the demo start a local Ray for a block with :func:`local_ray`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["LOCAL_RAY_ENV", "LOOPBACK", "init_ray", "local_ray", "start_local_ray", "use_local_ray_env"]

LOOPBACK = "127.0.0.1"  # the node address of a Ray that this process starts itself

# Loopback-only, telemetry-free settings for a Ray that this process starts itself (environment.md §4), and
# workers at the driver's priority: Ray starts them at nice 15, and on a local machine the driver and Ray's
# own processes (nice 0) then win every contended core; measured on 64 videos here, the whole run took 2.0x
# as long (119 s vs 71 s) and the model actor 1.9x as long to start (100 s vs 53 s).
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_worker_niceness": "0",
}


def use_local_ray_env() -> bool:
    """Set :data:`LOCAL_RAY_ENV` (as defaults) for a Ray this process will start; call it before Ray is
    imported. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import, and only that keeps its listening
    sockets on loopback (measured: a node IP of 127.0.0.1 alone still binds every interface).

    Returns:
        False when Ray was already imported, so the loopback setting can no longer take effect.
    """
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)
    return "ray" not in sys.modules


def init_ray(address: str | None = None, metrics_export_port: int | None = None) -> None:
    """Connect this driver to Ray unless it already is: to ``address`` when given, to the job's cluster when
    ``RAY_ADDRESS`` is set (a Ray job's driver), else to a new local Ray (:func:`start_local_ray`), whose
    Prometheus endpoint listens on 127.0.0.1 at ``metrics_export_port`` (None: a free port Ray picks; a
    cluster's port is set where its nodes start, ``ray start --metrics-export-port``)."""
    import ray  # here, not at the top: the jobs import this module before use_local_ray_env may import Ray

    if ray.is_initialized():
        return
    # ray.init replaces the driver's SIGTERM handler with one that exits mid-call (an abort, exit 134, when it
    # lands inside Ray's C++ code): keep the caller's, which the jobs use to stop cleanly (jobs/common.py).
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    try:
        _connect(ray, address, metrics_export_port)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, sigterm)


def _connect(ray: Any, address: str | None, metrics_export_port: int | None) -> None:
    if address is not None:
        ray.init(address=address)
    elif "RAY_ADDRESS" in os.environ:  # a job's driver joins its cluster, which keeps its own auth
        ray.init(include_dashboard=False)
    elif metrics_export_port is not None:
        start_local_ray(_metrics_export_port=metrics_export_port)
    else:
        start_local_ray()


def start_local_ray(**options: Any) -> None:
    """Start a Ray on this machine only: the node announces 127.0.0.1, no dashboard, LOCAL_RAY_ENV set (as
    defaults; it keeps the sockets on loopback only if it was set before Ray was imported)."""
    use_local_ray_env()
    import ray

    ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, **options)


@contextlib.contextmanager
def local_ray(cpus: int, resources: dict[str, float] | None = None) -> Iterator[bool]:
    """A local Ray with ``cpus`` logical CPUs (and custom ``resources``, such as stand-in accelerators) for the
    block, unless one is already connected; yields whether the block started it (then it also stops it).

    The node announces 127.0.0.1, telemetry is off, there is no dashboard, and the temp dir is short (Ray's
    unix socket paths must fit in 107 bytes). Ray's listening sockets stay on loopback only if
    :func:`use_local_ray_env` ran before Ray was imported (the job entry points call it).
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    start_local_ray(num_cpus=cpus, resources=resources or {}, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield True
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)

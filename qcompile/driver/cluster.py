"""Scale-out on a Dask cluster: ``--cluster local:N | tcp://HOST:PORT | scheduler-file:PATH``.

The one module that imports ``dask``/``distributed``, and only inside :func:`open_cluster`, so a
command without ``--cluster`` never imports them.  Drivers cut their work into *shards* (fixed
chunks of images, in image order), describe the job once (:meth:`Cluster.broadcast`: the model
and config are pickled once and held by every worker, which builds its engine once per job key,
see :func:`worker_cached`) and call :meth:`Cluster.map_shards`, which returns the shard results
**in shard order** whatever the completion order, so merged results equal a local run's.

Dead workers: the scheduler reschedules the tasks a dead worker was running or holding (a task
that kills ``allowed-failures`` + 1 workers fails the run).  After the run the scheduler's
transition log is read: a shard that entered ``processing`` more than once was re-run, and the
run's log says how many.  A scheduler that cannot be reached, or that is lost mid-run, is a
:class:`ClusterError` (one line, exit 2); drivers raise it before any output is written.

``local:N`` starts a ``LocalCluster`` of N worker processes with one thread each (numba and
ONNX Runtime limited to one thread) and closes it afterwards.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from qcompile.errors import QCompileError

__all__ = ["CLUSTER_HELP", "Cluster", "ClusterError", "open_cluster", "parse_address",
           "worker_cached", "worker_threads", "job_key", "pack", "unpack"]

CLUSTER_HELP = ("run on a Dask cluster: local:N (N worker processes on this machine), "
                "tcp://HOST:PORT or scheduler-file:PATH")
CONNECT_TIMEOUT_S = 10
_ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}


class ClusterError(QCompileError):
    """The cluster cannot be reached or was lost (exit 2, one line)."""


def parse_address(spec: str) -> tuple[str, Any]:
    """``"local:4"`` -> ``("local", 4)``; ``"tcp://h:8786"`` -> ``("tcp", "tcp://h:8786")``;
    ``"scheduler-file:/p.json"`` -> ``("file", "/p.json")``; anything else: ClusterError."""
    s = (spec or "").strip()
    if s.startswith("local:"):
        n = s[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise ClusterError(f"--cluster {spec}: local:N needs a worker count N >= 1, "
                               "e.g. local:2")
        return "local", int(n)
    if s.startswith(("tcp://", "tls://")) and ":" in s.split("://", 1)[1]:
        return "tcp", s
    if s.startswith("scheduler-file:") and len(s) > len("scheduler-file:"):
        path = s[len("scheduler-file:"):]
        if not os.path.isfile(path):
            raise ClusterError(f"--cluster {spec}: no scheduler file {path} (written by "
                               "`dask scheduler --scheduler-file PATH`)")
        return "file", path
    raise ClusterError(f"--cluster {spec!r}: expected local:N, tcp://HOST:PORT or "
                       "scheduler-file:PATH")


def job_key(*parts: bytes | str) -> str:
    """A job's identity for the worker-side cache: sha256 over the model bytes and config."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def pack(obj: Any) -> bytes:
    """``obj`` (an IR graph) as bytes for the workers; the IR's Value/Node links nest as deep
    as the graph, so pickling needs more recursion than Python's default allows."""
    import pickle

    with _deep():
        return pickle.dumps(obj, protocol=5)


def unpack(blob: bytes) -> Any:
    import pickle

    with _deep():
        return pickle.loads(blob)


class _deep:
    def __enter__(self) -> None:
        import sys

        self.old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(self.old, 200_000))

    def __exit__(self, *exc) -> None:
        import sys

        sys.setrecursionlimit(self.old)


_CACHE: dict[str, Any] = {}
_KEEP = 8


def worker_threads() -> int:
    """On a worker: the compute threads one task may use, ``NUMBA_NUM_THREADS`` from the
    worker's environment (``local:N`` sets 1; a ``dask worker`` started with it set is
    honoured), else 0 (all cores).  numba reads that variable once, when it is first imported,
    and a spawned worker re-imports the parent's ``__main__`` (a script importing qcompile
    imports numba) before the nanny applies the environment: two workers of ``local:2`` then
    ran two threads each on two cores, and the run was no faster than ``local:1``.  So the
    count is set again here, in the task's thread (numba's count is per thread); ONNX Runtime
    sessions built on the worker take the same count."""
    raw = os.environ.get("NUMBA_NUM_THREADS", "")
    n = int(raw) if raw.isdigit() and int(raw) > 0 else 0
    if n:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n


def worker_cached(key: str, build: Callable[[], Any]) -> Any:
    """On a worker: ``build()`` once per job key (the engine, the opened data set), then reuse;
    the last ``_KEEP`` jobs are kept (a sweep interleaves its formats).  Every call first sets
    the task's thread count (:func:`worker_threads`)."""
    worker_threads()
    if key not in _CACHE:
        while len(_CACHE) >= _KEEP:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build()
    return _CACHE[key]


def _sees(path: str) -> bool:
    return os.path.exists(path)


def _runs(keys: Sequence[str], dask_scheduler=None) -> dict[str, int]:
    """On the scheduler: how often each task entered ``processing`` (its transition log)."""
    counts = dict.fromkeys(keys, 0)
    for ev in dask_scheduler.story(*keys):
        if ev[0] in counts and ev[2] == "processing":
            counts[ev[0]] += 1
    return counts


def _probe(address: str) -> None:
    import socket

    host, _, port = address.split("://", 1)[1].rpartition(":")
    if not port.isdigit():
        raise OSError(f"no port in {address}")
    socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()


class Cluster:
    """A connected client (and, for ``local:N``, the LocalCluster it started)."""

    def __init__(self, spec: str, log: Callable[[str], None] = lambda m: None) -> None:
        self.spec, self.log = spec, log
        self.kind, self.where = parse_address(spec)
        self.client = self._local = None
        self.retried = 0

    # ----------------------------------------------------------------- life cycle
    def __enter__(self) -> Cluster:
        import dask
        from distributed import Client

        dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s",
                         "distributed.scheduler.allowed-failures": 3,
                         "distributed.worker.daemon": False})
        t0 = time.perf_counter()
        try:
            if self.kind == "local":
                import logging

                from distributed import LocalCluster

                self._local = LocalCluster(n_workers=self.where, threads_per_worker=1,
                                           processes=True, dashboard_address=None,
                                           silence_logs=logging.ERROR, env=dict(_ONE_THREAD))
                self.client = Client(self._local, timeout=CONNECT_TIMEOUT_S)
            elif self.kind == "file":
                self.client = Client(scheduler_file=self.where, timeout=CONNECT_TIMEOUT_S)
            else:
                _probe(self.where)  # a refused port fails now, not after the connect timeout
                self.client = Client(self.where, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            self.close()
            raise ClusterError(f"--cluster {self.spec}: cannot reach the scheduler "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no answer'}); "
                               "start one with `dask scheduler` or use local:N") from None
        n = len(self.client.scheduler_info().get("workers", {}))
        if n == 0:
            try:
                self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                self.close()
                raise ClusterError(f"--cluster {self.spec}: the scheduler has no workers; "
                                   "start some with `dask worker ADDRESS --nthreads 1`") from None
            n = len(self.client.scheduler_info().get("workers", {}))
        self.log(f"cluster: {self.spec}: {n} worker(s), ready in "
                 f"{time.perf_counter() - t0:.1f} s")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for obj in (self.client, self._local):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - closing a lost cluster must not mask the error
                    pass
        self.client = self._local = None

    # ----------------------------------------------------------------- data and jobs
    @property
    def workers(self) -> list[str]:
        return list(self.client.scheduler_info().get("workers", {}))

    def sees(self, path: str) -> bool:
        """True when every worker can read ``path`` (a worker-side ``os.path.exists``), so
        shards may carry image indices; False: the images must travel in the shards."""
        try:
            seen = self.client.run(_sees, os.path.abspath(path))
        except (OSError, TimeoutError) as e:
            raise self._lost(e) from None
        return bool(seen) and all(seen.values())

    def data_note(self, path: str) -> bool:
        """:meth:`sees`, said on the log: which way the images reach the workers."""
        ok = self.sees(path)
        self.log(f"cluster: workers read the images from {path}" if ok else
                 f"cluster: {path} is not visible on every worker; the images travel in the "
                 "shards")
        return ok

    def broadcast(self, obj: Any):
        """``obj`` pickled once and held by every worker (a future to pass to tasks)."""
        try:  # in a list: a scattered dict would become one key per item, named by its keys
            return self.client.scatter([obj], broadcast=True, hash=False)[0]
        except (OSError, TimeoutError) as e:
            raise self._lost(e) from None

    def map_shards(self, fn: Callable, shards: Sequence[Any], *, args: Sequence[Any] = (),
                   sizes: Sequence[int] | None = None, progress: Callable | None = None,
                   desc: str = "shards") -> list[Any]:
        """``[fn(shard, *args) for shard in shards]`` on the workers, results in shard order;
        ``progress(total=..., desc=...)`` advances by ``sizes[i]`` images per finished shard."""
        from distributed import as_completed
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        sizes = list(sizes) if sizes is not None else [1] * len(shards)
        bar = progress(total=sum(sizes), desc=desc) if progress else None
        out: list[Any] = [None] * len(shards)
        try:
            futs = [self.client.submit(fn, s, *args, key=f"qcompile-{desc.split()[0]}-{i}-"
                                       f"{os.urandom(4).hex()}", pure=False)
                    for i, s in enumerate(shards)]
            where = {f.key: i for i, f in enumerate(futs)}
            for fut, res in as_completed(futs, with_results=True):
                i = where[fut.key]
                out[i] = res
                if bar:
                    bar.update(sizes[i])
            runs = self.client.run_on_scheduler(_runs, list(where))
        except KilledWorker as e:
            raise ClusterError(f"--cluster {self.spec}: a shard killed "
                               f"{e.args[0] if e.args else 'several'} workers in a row; "
                               "giving up (out of memory on the workers?)") from None
        except (FutureCancelledError, CommClosedError, OSError, TimeoutError) as e:
            raise self._lost(e) from None
        finally:
            if bar:
                bar.close()
        again = sum(max(r - 1, 0) for r in runs.values())
        self.retried += again
        if again:
            self.log(f"cluster: {sum(r > 1 for r in runs.values())} shard(s) re-run after a "
                     f"worker died ({again} re-run(s)); every image counted once")
        return out

    def _lost(self, e: BaseException) -> ClusterError:
        return ClusterError(f"--cluster {self.spec}: lost the scheduler "
                            f"({type(e).__name__}); no output written")


def image_shards(idx, batch: int, ds, shared: bool) -> list[dict[str, Any]]:
    """``idx`` cut into the local run's batches, one shard each (``indices``); when the workers
    cannot see the data path the client reads each batch and ships it (``x``, ``labels``)."""
    parts = [idx[i:i + batch] for i in range(0, idx.size, batch)]
    shards: list[dict[str, Any]] = [{"indices": p} for p in parts]
    if not shared:
        for sh, bt in zip(shards, ds.batches(batch, indices=idx), strict=True):
            sh.update(x=bt.x, labels=bt.labels)
    return shards


def open_cluster(spec: str, log: Callable[[str], None] = lambda m: None) -> Cluster:
    """``with open_cluster("local:2", log) as c: c.map_shards(...)``."""
    return Cluster(spec, log)


def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` in consecutive chunks of ``size`` (the last one shorter)."""
    return [range(i, min(i + size, n)) for i in range(0, n, max(int(size), 1))]

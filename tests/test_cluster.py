"""``--cluster``: emulate, eval, verify and sweep on a Dask LocalCluster of 2 worker processes
give the same bits as the local run (logits, accuracies, verify tables, sweep rows), a worker
killed mid-run costs a re-run shard and nothing else, a dead scheduler is one line and exit 2,
and without --cluster nothing imports Dask.

One LocalCluster (2 processes, 1 thread each) serves the module; the drivers reach it by its
tcp:// address, and one CLI test starts its own with local:2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")

from qcompile.cli import app  # noqa: E402
from qcompile.driver.cluster import ClusterError, parse_address  # noqa: E402
from qcompile.driver.emulate import emulate, make_config  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402

runner = CliRunner()
N_IMAGES = 16


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      env={"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    client = Client(lc)
    yield lc.scheduler_address, client
    client.close()
    lc.close()


def _emulate(shared_data, **kw):
    return emulate(str(shared_data / "cifar10_resnet20.onnx"), make_config(format="bf16"),
                   data=str(shared_data / "cifar10_test_dev.npz"), limit=N_IMAGES,
                   preprocess="cifar", batch=4, **kw)


@pytest.fixture(scope="module")
def local_emulation(shared_data):
    return _emulate(shared_data)


SAME = ("results", "layers", "accuracy", "kernels", "images")


def test_parse_address():
    assert parse_address("local:3") == ("local", 3)
    assert parse_address("tcp://10.0.0.1:8786") == ("tcp", "tcp://10.0.0.1:8786")
    for bad in ("local:0", "local:x", "10.0.0.1:8786", "scheduler-file:/no/such.json", ""):
        with pytest.raises(ClusterError, match="--cluster"):
            parse_address(bad)


def test_worker_threads_follows_the_environment(monkeypatch):
    """A worker whose numba was imported before its environment was applied still runs its
    tasks on the environment's thread count (local:2 ran 2 threads per worker before)."""
    import numba

    from qcompile.driver.cluster import worker_threads

    full = numba.config.NUMBA_NUM_THREADS
    try:
        numba.set_num_threads(full)
        monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
        assert worker_threads() == 0 and numba.get_num_threads() == full
        monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
        assert worker_threads() == 1 and numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(full)


def test_no_dask_import_without_cluster(shared_data):
    """`import qcompile.cli` and a local emulate leave dask and distributed unimported."""
    code = (
        "import sys\nimport qcompile.cli\n"
        "from qcompile.driver.emulate import emulate, make_config\n"
        f"rep = emulate({str(shared_data / 'cifar10_resnet20.onnx')!r}, make_config(format='bf16'), "
        f"data={str(shared_data / 'cifar10_test_dev.npz')!r}, limit=2, preprocess='cifar')\n"
        "assert rep['images'] == 2\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "print('DASK', bad)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "DASK []" in r.stdout


def test_emulate_equals_local(shared_data, cluster, local_emulation):
    logs = []
    rep = _emulate(shared_data, cluster=cluster[0], log=logs.append)
    for k in SAME:
        assert json.dumps(rep[k]) == json.dumps(local_emulation[k]), k
    assert rep["images"] == N_IMAGES
    assert any("workers read the images from" in m for m in logs)


@pytest.mark.slow
def test_worker_killed_mid_run(shared_data, cluster, local_emulation, tmp_path):
    """A worker killed while it runs a shard: the scheduler re-runs the shard elsewhere, the
    results are the local run's, and the log says a shard was re-run.

    The kill comes from inside the worker, on the first shard that starts executing (a worker
    plugin's transition hook; a flag file makes it once only): a kill timed from the client
    raced the shards, which take a few milliseconds, and could land on an idle worker."""
    from distributed.diagnostics.plugin import WorkerPlugin

    address, client = cluster
    flag = str(tmp_path / "killed")

    class KillOnFirstShard(WorkerPlugin):  # local: pickled by value, workers need no import
        name = "qcompile-test-kill"

        def transition(self, key, start, finish, **kw):
            if finish == "executing" and str(key).startswith("qcompile-emulate"):
                try:
                    os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return
                os.kill(os.getpid(), signal.SIGKILL)

    client.register_plugin(KillOnFirstShard())
    try:
        logs = []
        rep = _emulate(shared_data, cluster=address, log=logs.append)
    finally:
        client.unregister_worker_plugin(KillOnFirstShard.name)
    assert os.path.exists(flag), "no shard started executing"
    for k in SAME:
        assert json.dumps(rep[k]) == json.dumps(local_emulation[k]), k
    assert any("re-run after a worker died" in m for m in logs), logs
    client.wait_for_workers(2, timeout=60)  # the nanny's restart, for the tests after this


def test_eval_equals_local(shared_data, cluster):
    from qcompile.driver.evaluate import evaluate_model

    kw = dict(preprocess="cifar", limit=200, batch=32, latency=False)
    model, data = shared_data / "cifar10_resnet20.onnx", shared_data / "cifar10_test_dev.npz"
    a = evaluate_model(str(model), str(data), **kw)
    b = evaluate_model(str(model), str(data), cluster=cluster[0], **kw)
    a.pop("eval_seconds"), b.pop("eval_seconds")
    assert a == b and a["images"] == 200


@pytest.mark.slow
def test_verify_equals_local(shared_data, cluster, tmp_path):
    from qcompile.driver.verify import verify_model

    q = tmp_path / "r20_int8.onnx"
    r = invoke("run", shared_data / "cifar10_resnet20.onnx", "--passes",
               "fold,calibrate{images=32},quantize", "--target", "ort-int8", "--calib",
               shared_data / "cifar10_test_dev.npz", "--preprocess", "cifar", "-o", q)
    assert r.exit_code == 0, r.output
    kw = dict(preprocess="cifar", limit=24, batch=8)
    a = verify_model(str(q), str(shared_data / "cifar10_test_dev.npz"), **kw).to_json()
    b = verify_model(str(q), str(shared_data / "cifar10_test_dev.npz"), cluster=cluster[0],
                     **kw).to_json()
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["images"] == 24
    with pytest.raises(QCompileError, match="--isolate run on this machine"):
        verify_model(str(q), str(shared_data / "cifar10_test_dev.npz"), cluster=cluster[0],
                     isolate=True, **kw)


@pytest.mark.slow
def test_sweep_equals_local(shared_data, cluster):
    from qcompile.driver.sweep import sweep

    kw = dict(preprocess="cifar", limit=N_IMAGES, calib_images=32)
    args = (str(shared_data / "cifar10_resnet20.onnx"), str(shared_data / "cifar10_test_dev.npz"),
            ["int8", "bf16"])
    a, b = sweep(*args, **kw), sweep(*args, cluster=cluster[0], **kw)
    for rep in (a, b):
        for row in rep["rows"]:
            row.pop("seconds")
    assert a["rows"] == b["rows"], [(x, y) for x, y in zip(a["rows"], b["rows"]) if x != y]
    assert a == b and [r["backend"] for r in a["rows"]] == ["ort", "mpfr-fast"]


def test_cli_local_cluster_and_dead_scheduler(shared_data, tmp_path, local_emulation):
    args = ["emulate", shared_data / "cifar10_resnet20.onnx", "--format", "bf16", "--data",
            shared_data / "cifar10_test_dev.npz", "--limit", N_IMAGES, "--preprocess", "cifar",
            "--batch", 4, "--json"]
    r = invoke(*args, "--cluster", "local:2")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert json.dumps(rep["results"]) == json.dumps(local_emulation["results"])
    out = tmp_path / "sweep.md"
    r = invoke("sweep", shared_data / "cifar10_resnet20.onnx", "--data",
               shared_data / "cifar10_test_dev.npz", "--preprocess", "cifar", "--limit", 8,
               "--calib-images", 16, "--formats", "int8", "-o", out, "--cluster",
               "tcp://127.0.0.1:1")
    assert r.exit_code == 2
    err = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "cannot reach the scheduler" in err[0], r.output
    assert "Traceback" not in r.output and not out.exists()

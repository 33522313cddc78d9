"""``ibfrun start / stop`` (spec §7.2): a real cluster of 2 engines that run an allreduce."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bluefog.run import interactive_run
from bluefog.run.ipengine import engine_argv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parser_flags():
    parser = interactive_run.make_parser()
    args = parser.parse_args(["start", "-np", "4", "-p", "2222", "--network-interface", "eth0",
                              "--use-infiniband", "--ipython-profile", "p", "--enable-heartbeat",
                              "-H", "a:2,b:2", "--verbose", "--extra-mpi-flags", "--mca x y"])
    assert (args.num_proc, args.ssh_port, args.network_interface, args.profile) == \
        (4, 2222, "eth0", "p")
    assert args.use_infiniband and args.enable_heartbeat and args.verbose
    argv = interactive_run._launcher_argv(args, [("a", 2), ("b", 2)])
    assert argv[:5] == [sys.executable, "-m", "bluefog.run.run", "-np", "4"]
    assert argv[5:13] == ["-H", "a:2,b:2", "-p", "2222", "--network-interface", "eth0",
                          "--use-infiniband", "--extra-mpi-flags=--mca x y"]
    assert argv[-3:] == ["-m", "bluefog.run.ipengine", "--profile=p"]   # heartbeat left on
    assert parser.parse_args(["stop"]).profile == "bluefog"
    for bad in (["start"], ["start", "-np", "2", "-H", "a:1", "-hostfile", "f"],
                ["start", "-np", "2", "--timeline-filename", "x"], ["start", "-np", "2", "--prefix", "/"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_engine_id_is_the_rank():
    assert engine_argv(["--profile=p"], {"OMPI_COMM_WORLD_RANK": "3"}) == ["--profile=p",
                                                                          "--IPEngine.id=3"]
    assert engine_argv(["--profile=p"], {"PMI_RANK": "1"})[-1] == "--IPEngine.id=1"
    assert engine_argv(["--profile=p"], {}) == ["--profile=p"]


def test_stop_without_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    assert interactive_run.main(["stop"]) == 0


def _cluster_processes(marker):
    """Pids (not ours) whose environment holds ``marker``, i.e. that this test's ibfrun started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.timeout(300)
def test_start_allreduce_stop_leaves_nothing(tmp_path, monkeypatch):
    ipp = pytest.importorskip("ipyparallel")
    ipython_dir = str(tmp_path / "ipython")
    monkeypatch.setenv("IPYTHONDIR", ipython_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEFOG_")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    marker = f"IPYTHONDIR={ipython_dir}".encode()
    cli = [sys.executable, "-m", "bluefog.run.interactive_run"]
    start = subprocess.Popen(cli + ["start", "-np", "2"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    client = None
    try:
        ready = start.stdout.readline()            # printed once every engine has registered
        assert "2 engines are ready" in ready, ready + start.stdout.read()
        client = ipp.Client(profile="bluefog")
        assert client.ids == [0, 1]                # engine id == rank
        view = client[:]
        view.execute("import torch\nimport bluefog.torch as bf\nbf.init()\n"
                     "rank = bf.rank()\n"
                     "total = bf.allreduce(torch.tensor([rank + 1.0]), average=False).item()\n"
                     "bf.suspend()", block=True)
        assert view.pull("rank", block=True) == [0, 1]
        assert view.pull("total", block=True) == [3.0, 3.0]
        assert len(_cluster_processes(marker)) >= 4   # supervisor, controller, launcher, engines
        again = subprocess.run(cli + ["start", "-np", "2"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr, again.stderr
        stuck = client[1].execute("import time\ntime.sleep(60)", block=False)
        time.sleep(0.5)
        assert interactive_run.interrupt_hanged_processes("bluefog", timeout=1.0) == [1]
        with pytest.raises(Exception, match="KeyboardInterrupt"):
            stuck.get(timeout=30)
        view.execute("answer = 7", block=True)        # both engines answer again (no code from
        assert view.pull("answer", block=True) == [7, 7]   # this module: engines can't import it)
    finally:
        if client is not None:
            client.close()
        stop = subprocess.run(cli + ["stop"], env=env, capture_output=True, text=True, timeout=120)
        try:
            start.wait(timeout=60)
        except subprocess.TimeoutExpired:
            start.send_signal(signal.SIGKILL)
    assert stop.returncode == 0, stop.stderr
    assert start.returncode == 0, start.stdout.read()
    deadline = time.monotonic() + 10
    while _cluster_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cluster_processes(marker) == []
    assert not os.path.exists(os.path.join(ipython_dir, "profile_bluefog", "pid", "ibfrun.json"))

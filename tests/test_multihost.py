"""``bfrun`` / ``ibfrun`` across two real hosts: Linux network namespaces on this machine, each with its
own hostname and OpenSSH server, joined by a veth link (see tests/netns_hosts.py). Two hosts x two
ranks, over TCP between the hosts; the launcher reaches hostB through ssh exactly as on a cluster.

Needs root, iproute2 and openssh-server (``apt-get install -y openssh-server``); skips, saying
which is missing, elsewhere.
"""

import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import netns_hosts  # noqa: E402

JOB = os.path.join(HERE, "multihost_job.py")


@pytest.fixture(scope="module")
def hosts():
    why = netns_hosts.unavailable()
    if why is not None:
        pytest.skip(f"multi-host tests need network namespaces and sshd: {why}")
    with netns_hosts.Hosts() as made:
        yield made


def _env(hosts, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BLUEFOG_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return hosts.env(env)


def _bfrun(hosts, args, timeout=180, **popen):
    """``bfrun args`` started on hostA."""
    argv = hosts.on("hostA", [sys.executable, "-m", "bluefog.run.run", *args])
    return subprocess.run(argv, env=_env(hosts), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, **popen)


def _check_bluefog_job(done):
    assert done.returncode == 0, done.stdout + done.stderr
    results = sorted((json.loads(line) for line in done.stdout.splitlines()
                      if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1, 2, 3], done.stdout
    for r in results:
        assert r["size"] == 4
        assert r["host"] == ("hostA" if r["rank"] < 2 else "hostB")   # real machine boundaries
        assert (r["machine_size"], r["machine_rank"]) == (2, r["rank"] // 2)
        assert (r["local_size"], r["local_rank"]) == (2, r["rank"] % 2)
        other = 1 - r["machine_rank"]
        assert r["in_machines"] == [other] and r["out_machines"] == [other]
        assert r["consensus"] == pytest.approx(1.5, abs=1e-6)
        assert r["total"] == 6.0
        assert r["hier_uniform"] == pytest.approx(1.5)           # (0.5 + 2.5) / 2 on every rank
        assert r["hier_weighted"] == pytest.approx(1.0 if r["rank"] < 2 else 2.0)
    return results


@pytest.mark.timeout(300)
def test_hosts_flag_picks_the_common_interface(hosts):
    done = _bfrun(hosts, ["-np", "4", "-H", "hostA:2,hostB:2", "--verbose", sys.executable, JOB])
    results = _check_bluefog_job(done)
    # bf0 is on both hosts; uniqA / uniqB are on one each and must be left out.
    assert "bfrun: using network interface(s) bf0" in done.stderr, done.stderr
    assert "--mca btl_tcp_if_include bf0 " in done.stderr
    assert {r["nccl_ifname"] for r in results} == {"bf0"}


@pytest.mark.timeout(300)
def test_hostfile_and_network_interface(hosts, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two hosts\nhostA slots=2\nhostB slots=2\n")
    done = _bfrun(hosts, ["-np", "4", "--hostfile", str(hostfile), "--network-interface", "bf0",
                          "--verbose", sys.executable, JOB])
    results = _check_bluefog_job(done)
    assert "using network interface" not in done.stderr       # given, not discovered
    assert "--mca btl_tcp_if_include bf0 " in done.stderr
    assert {r["nccl_ifname"] for r in results} == {"bf0"}
    # An interface that one host lacks is an error at start, naming it and the host.
    bad = _bfrun(hosts, ["-np", "4", "--hostfile", str(hostfile), "--network-interface", "uniqA",
                         sys.executable, "-c", "print('started')"], timeout=120)
    assert bad.returncode == 1 and "started" not in bad.stdout
    assert bad.stderr.strip() == ("bfrun: --network-interface uniqA: uniqA is not up with an IPv4 "
                                  "address on hostB (it has: bf0, uniqB); choose an interface that "
                                  "every host has"), bad.stderr


HOLD = """
import os, sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
comm.Barrier()
open(os.path.join(sys.argv[1], f"ready{comm.rank}"), "w").close()
while True:
    comm.Barrier()
    time.sleep(0.05)
"""


@pytest.mark.timeout(300)
def test_host_down_ends_the_job_naming_host_and_ranks(hosts, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    argv = hosts.on("hostA", [sys.executable, "-m", "bluefog.run.run", "-np", "4", "-H",
                              "hostA:2,hostB:2", sys.executable, "-c", HOLD, str(marks)])
    job = subprocess.Popen(argv, env=_env(hosts), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while len(os.listdir(marks)) < 4:
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.2)
        hosts.take_down("hostB")
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
        # hostB comes back up for the tests after this one
        hosts.restart_sshd("hostB")
    assert job.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("bfrun: lost contact with hostB (ranks 2, 3)"), err
    leftovers = [pid for pid in hosts.pids("hostA") if pid not in hosts.sshd_pids("hostA")]
    assert leftovers == [], leftovers


CLIENT = """
import sys, ipyparallel as ipp
rc = ipp.Client(profile="bluefog")
view = rc[:]
view.execute("import socket, torch\\nimport bluefog.torch as bf\\nbf.init()\\n"
             "out = (bf.rank(), socket.gethostname(), bf.machine_size(), "
             "bf.allreduce(torch.tensor([bf.rank() + 1.0]), average=False).item())", block=True)
print(sorted(view.pull("out", block=True)))
rc.close()
"""


@pytest.mark.timeout(400)
def test_ibfrun_start_and_stop_across_hosts(hosts, tmp_path):
    pytest.importorskip("ipyparallel")
    env = _env(hosts, IPYTHONDIR=str(tmp_path / "ipython"))
    cli = [sys.executable, "-m", "bluefog.run.interactive_run"]
    start = subprocess.Popen(hosts.on("hostA", cli + ["start", "-np", "4", "-H", "hostA:2,hostB:2"]),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=REPO)
    try:
        ready = start.stdout.readline()
        assert "4 engines are ready" in ready, ready + start.stdout.read()
        client = subprocess.run(hosts.on("hostA", [sys.executable, "-c", CLIENT]), env=env,
                                capture_output=True, text=True, timeout=180)
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == str([(0, "hostA", 2, 10.0), (1, "hostA", 2, 10.0),
                                             (2, "hostB", 2, 10.0), (3, "hostB", 2, 10.0)])
    finally:
        stop = subprocess.run(hosts.on("hostA", cli + ["stop"]), env=env, capture_output=True,
                              text=True, timeout=120)
        try:
            start.wait(timeout=60)
        except subprocess.TimeoutExpired:
            start.kill()
    assert stop.returncode == 0, stop.stderr
    assert start.returncode == 0
    for host in ("hostA", "hostB"):     # nothing but the ssh servers is left on either host
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = [p for p in hosts.pids(host) if p not in hosts.sshd_pids(host)]
            if not left:
                break
            time.sleep(0.2)
        assert left == [], (host, left)

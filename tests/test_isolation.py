"""The test harness itself: what one test changes does not reach the next."""
import os
import subprocess
import sys

from tests.conftest import REPO

TWO_TESTS = '''
import os
from training.cli import main

def test_a_cli_call_sets_tensorflow_defaults(tmp_path):
    empty = tmp_path / "empty.keras"  # passes the argument checks, then fails to load
    empty.write_bytes(b"")
    assert main(["evaluate", str(empty), "--dataset", "digits"]) == 2
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"

def test_b_the_next_test_and_its_subprocesses_do_not_see_them():
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
'''


def test_cli_environment_defaults_do_not_leak_into_later_tests(tmp_path):
    """In a full run, tests after an in-process ``main()`` call started their subprocesses
    with TF_ENABLE_ONEDNN_OPTS=1 (other kernels than the test process): the fresh-process
    round trip and kill -9 resume tests failed in the full suite, not alone."""
    (tmp_path / "test_two.py").write_text(TWO_TESTS)
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_two.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-3000:]

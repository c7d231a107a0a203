"""pytest plugin of qefleet's sandbox: a test that runs past the limit fails (and the
refinement loop drops it) instead of hanging the whole run. Loaded with
`-p _qefleet_test_timeout` from the job's work directory."""
import signal

import pytest

LIMIT_SECONDS = 10.0


class TestTimedOut(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimedOut(f"the test ran past {LIMIT_SECONDS:.0f} s and was stopped")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

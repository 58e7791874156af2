"""Markers of the training tests."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that runs several training processes "
                                       "(still part of CI)")

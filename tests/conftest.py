import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: spawns processes (several ranks, torchrun, torchx jobs) or trains long enough to check what the model "
        "learned; `make test` runs them, `make test-fast` (-m 'not slow') leaves them out",
    )

"""One Ray instance for the whole test session (started only if a test asks for it)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.sweep import RAY_ENV

    os.environ.update(RAY_ENV)
    # 3 logical CPUs on a 2-core machine: room for two 1-CPU trials (or one 2-CPU one) beside the sweep's
    # measurement service, as `resources.local_cpus: 3` gives a sweep
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": RAY_ENV})
    try:
        yield ray
    finally:
        ray.shutdown()

"""Test set-up: 8 simulated CPU devices, the shared data folder, caches in /tmp.

Everything here must happen before JAX initialises, hence environment variables at
import time. Subprocess runs of the entry point inherit them.
"""

import os
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Single-threaded Eigen inside each simulated device. Other projects report XLA:CPU's
# intra-op Eigen pool wedging (a hang in block_until_ready); one CI run of ours hung for
# 90 minutes with no stack, cause unknown, so this is a precaution, not a proven fix.
# With 8 devices on 2 cores the pool only oversubscribes them, and the time is the same
# (tests/test_parallel.py + the RL resume tests: 130 s against 117-132 s, warm caches).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("S2GR_DATA_DIR", str((ROOT / ".." / "shared" / "data").resolve()))
_CACHE = pathlib.Path(tempfile.gettempdir()) / "s2gr_jax_test_cache"
# One TFDS build folder per pytest-xdist worker: two workers never build into the same one.
os.environ.setdefault("S2GR_TFDS_DIR",
                      str(_CACHE / "tfds" / os.environ.get("PYTEST_XDIST_WORKER", "main")))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from absl import flags  # pylint: disable=g-import-not-at-top
from hypothesis import HealthCheck, settings  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# The fuzz tests (tests/test_inputs.py): a bounded, reproducible number of examples by
# default; `pytest --hypothesis-profile=slow` draws many more, randomly.
_FUZZ_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=_FUZZ_CHECKS, database=None)
settings.register_profile("slow", max_examples=1000, deadline=None,
                          suppress_health_check=_FUZZ_CHECKS)
settings.load_profile("ci")

flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.

DATA_DIR = pathlib.Path(os.environ["S2GR_DATA_DIR"])


@pytest.fixture(scope="session")
def beauty_dir() -> pathlib.Path:
  path = DATA_DIR / "beauty"
  if not (path / "sequences.txt").exists():
    pytest.fail(f"Amazon Beauty not found at {path}; set S2GR_DATA_DIR")
  return path

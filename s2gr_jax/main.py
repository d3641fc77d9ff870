r"""Entry point: ``python -m s2gr_jax.main --config configs/<recipe>.py[:preset] --workdir DIR``.

Values are overridden with ``--config.train.num_steps=2000`` style flags; the config is
locked, so a mistyped key fails. Rerunning the same command in the same workdir resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, e.g. configs/default.py or configs/tiger_beauty.py:tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it "
                               "holds checkpoints): a local path or gs://BUCKET/DIR.")
_MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", False, "Join a multi-host run with jax.distributed.initialize() "
    "(auto-detected on Cloud TPU and SLURM, else JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES, JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def setup_logging() -> None:
  """Our progress lines on stdout; library INFO chatter (Orbax, TFDS) silenced."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logger = logging.getLogger("s2gr_jax")
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
  logger.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  logger.propagate = False


def initialize_distributed() -> None:
  """``jax.distributed.initialize``: auto-detected on Cloud TPU and SLURM; elsewhere from
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (, JAX_LOCAL_DEVICE_IDS)."""
  env = os.environ
  kwargs = {}
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
  if env.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
  if env.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  if env.get("JAX_LOCAL_DEVICE_IDS"):
    kwargs["local_device_ids"] = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
  jax.distributed.initialize(**kwargs)


def enable_compilation_cache() -> None:
  """Reuse compiled steps across runs (``$JAX_COMPILATION_CACHE_DIR`` wins if set).

  Not in a multi-process run on CPU: there every process loads the executable process 0
  wrote to the cache, and on XLA:CPU's cross-process (gloo) collectives that executable
  hangs in its first collective (measured with jax 0.12.1: a two-process run on a warm
  cache hung in its first train step every time, on a cold one it ran). TPU and GPU
  runs keep the cache."""
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    jax.config.update("jax_enable_compilation_cache", False)
    return
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.join(
        os.path.expanduser("~"), ".cache", "s2gr_jax", "jax_compilation_cache"))


def parse_flags(argv):
  """absl's flag parsing, with a one-line error for an override of a key that does not
  exist in a model's section (ml_collections raises a bare KeyError there)."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:
    from s2gr_jax import config_lib  # pylint: disable=g-import-not-at-top
    message = config_lib.explain_override(argv[1:])
    if message is None:
      raise
    raise SystemExit(f"error: {message}") from e


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MULTIPROCESS.value:
    initialize_distributed()
  jax.config.update("jax_threefry_partitionable", True)
  enable_compilation_cache()
  setup_logging()
  from s2gr_jax import run  # pylint: disable=g-import-not-at-top
  with input_errors_end_the_run():
    run.run(_CONFIG.value, os.path.expanduser(_WORKDIR.value))


TRACEBACK_ENV = "S2GR_TRACEBACK"


@contextlib.contextmanager
def input_errors_end_the_run():
  """Bad input (``errors.InputError``: a malformed file, a missing one, a failed or
  corrupted download) ends the process with its one-line message and exit status 2;
  ``S2GR_TRACEBACK=1`` shows the traceback instead. Anything else is a bug and keeps
  its traceback."""
  from s2gr_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    yield
  except errors.InputError as e:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
      raise
    sys.stdout.flush()
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

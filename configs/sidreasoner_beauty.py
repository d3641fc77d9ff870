"""SIDReasoner on Gemma 3 270M, Amazon Beauty (titles, brands and categories; no
descriptions, so the item-text stream is shorter). The stages, presets and keys are
those of configs/sidreasoner_scientific.py.

Commands:
  S2GR_DATA_DIR=../shared/data python -m s2gr_jax.main \\
      --config configs/sidreasoner_beauty.py --workdir runs/sidreasoner_beauty
  ... --config configs/sidreasoner_beauty.py:cpu --workdir runs/sr_beauty_cpu
  ... --config configs/sidreasoner_beauty.py:tiny --workdir /tmp/sr_beauty_tiny

Not run yet on this machine (Beauty has 2.7x Scientific's users; the :cpu budget of
Scientific is the first measurement).
"""

from s2gr_jax import config_lib


def get_config(arg: str | None = None):
  return config_lib.sidreasoner_recipe("beauty", arg)

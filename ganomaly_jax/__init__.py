"""ganomaly_jax: GAN-based unsupervised anomaly detection (GANomaly and its variants) in JAX/Flax."""

from ganomaly_jax import xla_flags as _xla_flags

# Before any JAX computation starts the CPU backend (see xla_flags.py for what and why).
_xla_flags.apply_cpu_defaults()

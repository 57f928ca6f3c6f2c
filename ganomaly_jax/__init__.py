"""ganomaly_jax: GAN-based unsupervised anomaly detection (GANomaly and its variants) in JAX/Flax.

Importing the package has no side effects; the entry points apply the XLA:CPU defaults
(`ganomaly_jax.cpu.xla_flags`) before JAX starts its backend.
"""

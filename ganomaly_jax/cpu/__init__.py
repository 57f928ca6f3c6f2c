"""The XLA:CPU speed layer: exact CPU forms of flax's layers, XLA flags, and memory hand-back.

Nothing in `ganomaly_jax.models` imports this package. `kernels.cpu_kernels(mode)` routes the
models' `nn.Conv`, `nn.ConvTranspose` and `nn.BatchNorm` calls to the forms here while a step is
traced, for the CPU platform only (`jax.lax.platform_dependent`); `xla_flags` holds the XLA:CPU
defaults the entry points apply, and `host_memory` the glibc heap trim after compiling.
"""

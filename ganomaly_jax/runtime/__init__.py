"""How a run executes, apart from what it learns: process start-up, the compilation cache,
preemption signals, phase timing, TensorBoard summaries, the device mesh and shardings, the run
directory with its lock and disk accounting, and checkpoints. Nothing here knows a method."""

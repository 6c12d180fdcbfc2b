"""Benchmark helpers shared by ``lcssm bench``, ``benchmarks/`` and the timing targets of :mod:`lcssm.reproduce`:
:mod:`~lcssm.bench.suite` (the objective and sampler benchmark), :mod:`~lcssm.bench.steps` (the objectives as the
benchmarks compare them, and a full training step) and :mod:`~lcssm.bench.timing` (side-by-side timing in one
process, autograd-graph memory)."""

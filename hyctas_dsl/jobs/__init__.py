"""Long-running jobs that need torch: supernet training, retraining, search, evaluation,
latency measurement, all inside one run directory (``rundir``).

Nothing here is imported by ``import hyctas_dsl``; the CLI imports the jobs inside commands.
``config`` (the pydantic job configs) and ``errors`` are torch-free, so the CLI validates
options and reports errors without torch.
"""

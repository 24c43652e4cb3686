"""Long-running jobs that need torch: supernet training, search, latency measurement.

Nothing here is imported by ``import hyctas_dsl``; the CLI imports it inside commands.
"""

"""The errors a long job reports to its user (torch-free, so the CLI edge can name them
without importing torch). Each is one line: the CLI prints it and exits 2 (1 for a diverged
run); see :mod:`hyctas_dsl.cli_support`."""

from __future__ import annotations

__all__ = ["ConfigError", "JobError", "ResumeMismatch", "RunDirError", "TrainingDiverged"]


class ConfigError(ValueError):
    """A config file or option that cannot be used; the message names the file and key."""


class JobError(ValueError):
    """A long job cannot start or continue as asked; the message says what to do."""


class ResumeMismatch(JobError):
    """``--resume`` that would not continue the same run: another arch, space or option, or
    a checkpoint that is missing or damaged."""


class RunDirError(JobError):
    """A run directory that cannot be used: a file, unwritable, or in use by another run."""


class TrainingDiverged(RuntimeError):
    """The loss, a parameter or a buffer became NaN or infinite; the last good checkpoint
    is kept."""

"""Training: the one fit loop, the shared run settings, and the run directory that owns a run's files."""

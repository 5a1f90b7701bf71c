"""Shared plumbing every other folder may use: the repository paths, torch.distributed, checkpoint I/O."""

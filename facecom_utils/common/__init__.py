"""Shared plumbing every other folder may use: the repository paths, torch.distributed, checkpoint I/O,
progress lines, the machine's description."""

"""The stage plumbing: flags, run directory, logging, checkpoints and the training loop
shared by the stage scripts.  It sits above ``tools``, ``data`` and ``net``."""

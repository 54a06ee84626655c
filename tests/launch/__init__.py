"""Tests of ``mtl_torchrec.launch``."""

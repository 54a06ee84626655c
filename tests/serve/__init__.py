"""Tests of ``mtl_torchrec.serve``."""

"""Tests of ``mtl_torchrec.workflows``."""

"""Tests of ``mtl_torchrec.distributed``."""

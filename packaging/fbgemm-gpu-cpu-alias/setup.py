"""A CPU stand-in for the ``fbgemm-gpu`` distribution name.

torchrec declares ``fbgemm-gpu`` (the CUDA build on PyPI). On CPU-only machines the
CPU build is published as ``fbgemm-gpu-cpu`` and installs into the same import
package, so this empty distribution satisfies torchrec's requirement with it.
"""
from setuptools import setup

setup(
    name="fbgemm-gpu",
    version="1.8.0+cpualias",
    description="Satisfies the fbgemm-gpu requirement with the fbgemm-gpu-cpu build",
    install_requires=["fbgemm-gpu-cpu==1.8.0"],
    py_modules=[],
)

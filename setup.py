"""Dependencies, extras, entry points and package contents of ``mtl_torchrec``.

Name, version, description, readme and the Python requirement are in ``pyproject.toml``, which
lists the fields below as ``dynamic`` so that setuptools reads each from here, declared once.
"""

from setuptools import find_packages, setup

setup(
    # mtl_torchrec/configs holds the packaged job configs (no Python), named explicitly since
    # find_packages only finds folders with an __init__.py.
    packages=find_packages(include=["mtl_torchrec", "mtl_torchrec.*"]) + ["mtl_torchrec.configs"],
    package_data={"mtl_torchrec.configs": ["*.yaml"]},
    # torch is deliberately unpinned here: install the build for your machine first
    # (CPU: torch==2.13.0 with fbgemm-gpu-cpu==1.8.0; CUDA: see README).
    install_requires=[
        "torch>=2.6",
        "torchrec==1.8.0",
        "transformers>=4.40",
        "safetensors",
        "torchx>=0.7.0",
        # torchx's Kubernetes scheduler; torchx 0.7 pins urllib3<1.27, which newer clients refuse.
        "kubernetes>=25,<31",
        "pydantic>=2.6",
        "pyyaml",
        "tqdm",
        "numpy",
        "pandas",
        "pyarrow",
        "matplotlib",
        "tensorboard",
        # IsotonicRegression for train.calibration=isotonic (eval/calibration.py).
        "scikit-learn",
    ],
    extras_require={"dev": ["pytest", "ruff==0.17.6"]},
    entry_points={
        "console_scripts": ["mtl-torchrec=mtl_torchrec.launch.cli:main"],
        "torchx.components": [
            "mtl_torchrec = mtl_torchrec.components",
            "_builtins = torchx.components",
        ],
    },
)

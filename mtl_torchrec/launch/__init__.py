"""The ``mtl-torchrec`` command line (one module per sub-command) and the torchx job builders."""

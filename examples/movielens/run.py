"""Text+ID vs ID-only MMoE on MovieLens-100K (built-in source), overall and on cold-start items.

The same as ``examples/compare_text.py --config examples/movielens/config.yaml``:

    python examples/movielens/run.py data.movielens.path=data/ml-100k                 # from the repository root
    python examples/movielens/run.py data.movielens.path=data/ml-100k train.epochs=5
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compare_text import main  # noqa: E402  (the examples folder is not a package)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_config=str(Path(__file__).resolve().parent / "config.yaml"), prog="run.py"))

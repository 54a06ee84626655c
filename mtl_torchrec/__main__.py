import sys

from mtl_torchrec.launch.cli import main

sys.exit(main())

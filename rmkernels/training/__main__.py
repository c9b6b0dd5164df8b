"""``python -m rmkernels.training`` (and ``torchrun ... -m rmkernels.training``): an alias of ``rmk train``."""
import sys

from rmkernels.training.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m training.retrain`: see `training.retrain.service`."""

import sys

from training.retrain.service import main

if __name__ == "__main__":
    sys.exit(main())

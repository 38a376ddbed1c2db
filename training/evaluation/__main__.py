"""`python -m training.evaluation`: see `training.evaluation.early_warning`."""

import sys

from training.evaluation.early_warning import main

if __name__ == "__main__":
    sys.exit(main())

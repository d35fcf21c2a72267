"""`python -m nanogpt.plot`: overlay the loss curves of runs or sweeps (the code: nanogpt/scaling/plot.py)."""
import sys

from nanogpt.scaling.plot import main

if __name__ == "__main__":
    sys.exit(main())

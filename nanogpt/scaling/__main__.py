"""`python -m nanogpt.scaling collect|fit|best-lr|tune-fit|compare SWEEP...`: the command line of nanogpt/scaling/collect.py."""
import sys

from nanogpt.scaling.collect import main

if __name__ == "__main__":
    sys.exit(main())

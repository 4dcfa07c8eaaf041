"""CPU split 70/30 between hot_a and hot_b, called by driver, for argv[1] seconds."""

import sys
import time


def hot_a(n):
    total = 0
    for i in range(n):
        # Small integers only: a product past 2**30 takes a second digit, and slower
        # arithmetic in one function alone would move the split on some builds.
        x = i & 4095
        total = (total + x * x) & 0xFFFFFF
    return total


def hot_b(n):
    # The same work per step as hot_a.
    total = 0
    for i in range(n):
        x = i & 4095
        total = (total + x * x) & 0xFFFFFF
    return total


def driver(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hot_a(70_000)
        hot_b(30_000)


if __name__ == "__main__":
    driver(float(sys.argv[1]))

"""CPU split 70/30 between hot_a and hot_b, called by driver, for argv[1] seconds."""

import sys
import time


def hot_a(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def hot_b(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def driver(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hot_a(70_000)
        hot_b(30_000)


if __name__ == "__main__":
    driver(float(sys.argv[1]))

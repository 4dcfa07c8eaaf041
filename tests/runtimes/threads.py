"""Two threads on CPU in their own functions, one sleeping and one writing a file, for
argv[1] seconds; each thread names itself (prctl) so stacks can be told apart."""

import ctypes
import os
import sys
import tempfile
import threading
import time

PR_SET_NAME = 15


def name_thread(name):
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def spin_a(end):
    total = 0
    while time.monotonic() < end:
        for i in range(10_000):
            total += i
    return total


def spin_b(end):
    total = 0
    while time.monotonic() < end:
        for i in range(10_000):
            total += i
    return total


def nap(end):
    while time.monotonic() < end:
        time.sleep(0.05)


def write_out(end):
    with tempfile.TemporaryFile() as out:
        block = b"x" * 4096
        while time.monotonic() < end:
            out.write(block)
            out.flush()
            os.fsync(out.fileno())
            out.seek(0)
            time.sleep(0.01)


def run(name, work, end):
    name_thread(name)
    work(end)


def main(seconds):
    end = time.monotonic() + seconds
    threads = [
        threading.Thread(target=run, args=(name, work, end))
        for name, work in [
            ("spin-a", spin_a),
            ("spin-b", spin_b),
            ("napper", nap),
            ("writer", write_out),
        ]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(float(sys.argv[1]))

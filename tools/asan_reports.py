"""Classify the sanitizer logs of `make check-python-asan`; exit 1 if any
report is real.

One kind is a known misreport and is listed but not failed on: a
stack-buffer-underflow in "thread T-1" (a thread ASan does not know) with
no stack trace at all. ASan reports it when a thread's stack is unwound
without its help: CPython ends a thread that wakes up in Python during
finalization with pthread_exit, and the forced unwinding leaves redzones
poisoned on a stack that is then reused (docs/reliability.md). Any report
with a stack trace, any other kind, and any UBSan report counts as real.
"""
import re
import sys

KNOWN = re.compile(
    r"\A=+\n==\d+==ERROR: AddressSanitizer: stack-buffer-underflow on "
    r"address 0x[0-9a-f]+ at pc 0x[0-9a-f]+ bp 0x[0-9a-f]+ sp 0x[0-9a-f]+\n"
    r"(READ|WRITE) of size \d+ at 0x[0-9a-f]+ thread T-1\s*\Z")


def main(paths):
    real = 0
    for path in paths:
        with open(path, errors="replace") as f:
            text = f.read()
        if KNOWN.match(text):
            print(f"{path}: known misreport (stack-buffer-underflow in an "
                  f"unknown thread, no stack trace); not counted:\n{text}")
        else:
            real += 1
            print(f"{path}:\n{text}")
    if real:
        print(f"{real} sanitizer report(s) above")
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

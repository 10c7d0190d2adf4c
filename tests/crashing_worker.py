"""Test-only entry point: a real worker that SIGKILLs itself at one named step of its first
job, to prove the queue recovers from a death between any two steps. Production workers
have no such switch.

    python crashing_worker.py STEP NAME     (database from QUEUECTL_DB)
"""

import os
import signal
import sys

from queuectl.locator import resolve
from queuectl.worker import WorkerOptions, run_worker


def main() -> int:
    step, name = sys.argv[1], sys.argv[2]

    def on_step(reached: str) -> None:
        if reached == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return run_worker(resolve(), WorkerOptions(name=name, poll_interval=0.05), "json", on_step)


if __name__ == "__main__":
    sys.exit(main())

"""The physical limit: spawn and reap `/bin/sh -c true` COUNT times, each in its own session.

Run as `python bench/spawner.py COUNT`: prints `ready`, waits for a line on stdin (so that
parallel spawners start together), then spawns one process at a time with posix_spawn
(setsid, stdin from /dev/null) and waits for it, and prints {"start", "end"} (epoch seconds).
"""

import json
import os
import sys
import time

SHELL = "/bin/sh"


def main() -> int:
    count = int(sys.argv[1])
    env = dict(os.environ)
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    for _ in range(count):
        pid = os.posix_spawn(SHELL, [SHELL, "-c", "true"], env, file_actions=actions, setsid=True)
        os.waitpid(pid, 0)
    end = time.time()
    print(json.dumps({"start": start, "end": end}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

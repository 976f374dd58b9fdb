"""Run `tailor train ARGS` with a step callback, so a test can crash or interrupt a run at a known step.

    python _interruptible_train.py kill STEP ARGS...     SIGKILL this process right after optimizer step STEP
    python _interruptible_train.py sleep SECONDS ARGS... print "step N" and sleep after every step (to time Ctrl-C)
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time

import tailorlm.training.loop as loop
from tailorlm.cli import main


def _callback(mode: str, value: str, step: int, record: dict) -> None:
    if mode == "kill" and step == int(value):
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        print(f"step {step}", flush=True)
        time.sleep(float(value))


if __name__ == "__main__":
    mode, value, *argv = sys.argv[1:]
    loop.train = functools.partial(loop.train, callbacks=(functools.partial(_callback, mode, value),))
    sys.exit(main(["train", *argv]))

"""Unix signal handling on a dispatch queue."""
import os
import signal

import dispatchkit as cygcd

received = cygcd.Semaphore(0)


def on_signal():
    print("Received SIGUSR1!")
    received.signal()


signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # disable default handling
source = cygcd.SignalSource(signal.SIGUSR1, on_signal)
source.start()
os.kill(os.getpid(), signal.SIGUSR1)
received.wait()
source.cancel()

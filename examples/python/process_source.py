"""Process lifecycle monitoring."""
import subprocess

import dispatchkit as cygcd

exited = cygcd.Semaphore(0)


def on_exit():
    print("Child process exited!")
    exited.signal()


proc = subprocess.Popen(["sleep", "0.1"])
source = cygcd.ProcessSource(proc.pid, on_exit, events=cygcd.PROC_EXIT)
source.start()
proc.wait()
exited.wait()
source.cancel()

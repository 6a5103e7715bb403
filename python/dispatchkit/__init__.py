"""dispatchkit: Grand Central Dispatch for Python on Linux (the cygcd API),
plus futex synchronisation (dispatchkit.sync), atomics on buffers
(dispatchkit.atomics) and zero-copy shared-memory frame IPC
(dispatchkit.zerobuffer), all in one C library.

Code written for cygcd runs unchanged with ``import dispatchkit as cygcd``.
"""
import atexit as _atexit
import logging as _logging

from dispatchkit._dk import (  # noqa: F401
    Queue,
    Workloop,
    Group,
    Semaphore,
    Once,
    Timer,
    SignalSource,
    ReadSource,
    WriteSource,
    ProcessSource,
    DataSource,
    IOChannel,
    Data,
    read_async,
    write_async,
    apply,
    time_from_now,
    walltime,
    get_specific,
    main,
    drain_main_queue,
    main_queue_fd,
    DISPATCH_TIME_FOREVER,
    DISPATCH_TIME_NOW,
    NSEC_PER_MSEC,
    NSEC_PER_SEC,
    NSEC_PER_USEC,
    USEC_PER_SEC,
    MSEC_PER_SEC,
    QUEUE_PRIORITY_HIGH,
    QUEUE_PRIORITY_DEFAULT,
    QUEUE_PRIORITY_LOW,
    QUEUE_PRIORITY_BACKGROUND,
    QOS_CLASS_USER_INTERACTIVE,
    QOS_CLASS_USER_INITIATED,
    QOS_CLASS_DEFAULT,
    QOS_CLASS_UTILITY,
    QOS_CLASS_BACKGROUND,
    QOS_CLASS_UNSPECIFIED,
    PROC_EXIT,
    PROC_FORK,
    PROC_EXEC,
    PROC_SIGNAL,
    IO_STREAM,
    IO_RANDOM,
    IO_STOP,
    AUTORELEASE_FREQUENCY_INHERIT,
    AUTORELEASE_FREQUENCY_WORK_ITEM,
    AUTORELEASE_FREQUENCY_NEVER,
    DATA_ADD,
    DATA_OR,
    DATA_REPLACE,
)
from dispatchkit import _dk
from dispatchkit._executor import Executor, Future  # noqa: F401

# Pending callbacks must not enter Python while it finalizes.
_atexit.register(_dk._shutdown)

# The library logs (dead holders taken over, stale names reclaimed, duplex
# servers stopping) under "dispatchkit"; silent until the application
# configures logging, as the logging HOWTO asks of libraries.
_logging.getLogger("dispatchkit").addHandler(_logging.NullHandler())

from dispatchkit._version import __version__  # noqa: E402

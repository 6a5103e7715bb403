"""Every constant the cygcd seed lists, with GCD's values."""
import dispatchkit as dk


def test_time_constants():
    assert dk.DISPATCH_TIME_NOW == 0
    assert dk.DISPATCH_TIME_FOREVER == 2**64 - 1
    assert dk.NSEC_PER_SEC == 1_000_000_000
    assert dk.NSEC_PER_MSEC == 1_000_000
    assert dk.NSEC_PER_USEC == 1_000
    assert dk.USEC_PER_SEC == 1_000_000
    assert dk.MSEC_PER_SEC == 1_000


def test_priority_and_qos_constants():
    assert (dk.QUEUE_PRIORITY_HIGH, dk.QUEUE_PRIORITY_DEFAULT,
            dk.QUEUE_PRIORITY_LOW, dk.QUEUE_PRIORITY_BACKGROUND) == \
        (2, 0, -2, -32768)
    assert dk.QOS_CLASS_USER_INTERACTIVE == 0x21
    assert dk.QOS_CLASS_USER_INITIATED == 0x19
    assert dk.QOS_CLASS_DEFAULT == 0x15
    assert dk.QOS_CLASS_UTILITY == 0x11
    assert dk.QOS_CLASS_BACKGROUND == 0x09
    assert dk.QOS_CLASS_UNSPECIFIED == 0


def test_process_io_and_autorelease_constants():
    assert dk.PROC_EXIT == 0x80000000
    assert dk.PROC_FORK == 0x40000000
    assert dk.PROC_EXEC == 0x20000000
    assert dk.PROC_SIGNAL == 0x08000000
    assert (dk.IO_STREAM, dk.IO_RANDOM, dk.IO_STOP) == (0, 1, 1)
    assert (dk.AUTORELEASE_FREQUENCY_INHERIT,
            dk.AUTORELEASE_FREQUENCY_WORK_ITEM,
            dk.AUTORELEASE_FREQUENCY_NEVER) == (0, 1, 2)

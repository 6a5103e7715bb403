/*
 * Binding of the dispatch runtime: the cygcd API (Queue, Group, Semaphore,
 * Once, apply, time functions, constants) on top of the dk core.
 */
#include "python/binding.h"

#include <stdint.h>

struct int_const {
    const char *name;
    long long value;
};

static const struct int_const int_consts[] = {
    {"DISPATCH_TIME_NOW", 0},
    {"NSEC_PER_SEC", 1000000000LL},
    {"NSEC_PER_MSEC", 1000000LL},
    {"NSEC_PER_USEC", 1000LL},
    {"USEC_PER_SEC", 1000000LL},
    {"MSEC_PER_SEC", 1000LL},
    {"QUEUE_PRIORITY_HIGH", 2},
    {"QUEUE_PRIORITY_DEFAULT", 0},
    {"QUEUE_PRIORITY_LOW", -2},
    {"QUEUE_PRIORITY_BACKGROUND", -32768},
    {"QOS_CLASS_USER_INTERACTIVE", 0x21},
    {"QOS_CLASS_USER_INITIATED", 0x19},
    {"QOS_CLASS_DEFAULT", 0x15},
    {"QOS_CLASS_UTILITY", 0x11},
    {"QOS_CLASS_BACKGROUND", 0x09},
    {"QOS_CLASS_UNSPECIFIED", 0},
    {"PROC_EXIT", 0x80000000LL},
    {"PROC_FORK", 0x40000000LL},
    {"PROC_EXEC", 0x20000000LL},
    {"PROC_SIGNAL", 0x08000000LL},
    {"IO_STREAM", 0},
    {"IO_RANDOM", 1},
    {"IO_STOP", 1},
    {"AUTORELEASE_FREQUENCY_INHERIT", 0},
    {"AUTORELEASE_FREQUENCY_WORK_ITEM", 1},
    {"AUTORELEASE_FREQUENCY_NEVER", 2},
};

int
dkpy_dispatch_exec(PyObject *m)
{
    for (size_t i = 0; i < sizeof int_consts / sizeof int_consts[0]; i++) {
        if (PyModule_AddObject(m, int_consts[i].name,
                               PyLong_FromLongLong(int_consts[i].value)) <
            0) {
            return -1;
        }
    }
    PyObject *forever = PyLong_FromUnsignedLongLong(UINT64_MAX);
    if (forever == NULL ||
        PyModule_AddObject(m, "DISPATCH_TIME_FOREVER", forever) < 0) {
        Py_XDECREF(forever);
        return -1;
    }
    return 0;
}

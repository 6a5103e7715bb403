/*
 * The OS helpers the Python layer shares with the core (os.h), as private
 * functions of dispatchkit._dk: process liveness (and the start time that
 * tells a reused pid from its first owner), the one name rule, and shared
 * memory objects created with an exact mode and opened with an owner
 * check. dispatchkit._pid_registry (the named objects' PID directories)
 * calls them, so Python and C answer these questions the same way.
 */
#include "python/binding.h"

#include <errno.h>

#include "os/linux/os.h"

/* An "O&" converter of a pid argument: any int. Values no process can
 * have (0, negatives, too large) become 0, which names no process in
 * os.h's table; a non-int is a TypeError. */
static int
pid_arg(PyObject *obj, void *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "pid must be an int, not %s",
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    *(uint64_t *)out = (overflow != 0 || v <= 0) ? 0 : (uint64_t)v;
    return !(v == -1 && PyErr_Occurred());
}

/* _pid_alive(pid, start_time=None, /): os.h's liveness. A start time no
 * process can have (negative, or past 64 bits: junk read from a file)
 * matches none. */
static PyObject *
os_pid_alive(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *start_obj = Py_None;
    uint64_t pid;
    if (!PyArg_ParseTuple(args, "O&|O:_pid_alive", pid_arg, &pid,
                          &start_obj)) {
        return NULL;
    }
    if (start_obj == Py_None) {
        return PyBool_FromLong(dk__os_pid_alive(pid));
    }
    if (!PyLong_Check(start_obj)) {
        PyErr_Format(PyExc_TypeError,
                     "start_time must be an int or None, not %s",
                     Py_TYPE(start_obj)->tp_name);
        return NULL;
    }
    unsigned long long start = PyLong_AsUnsignedLongLong(start_obj);
    if (start == (unsigned long long)-1 && PyErr_Occurred()) {
        /* Negative or too large: recorded by no process we can meet. */
        PyErr_Clear();
        start = UINT64_MAX;
    }
    return PyBool_FromLong(dk__os_pid_alive_since(pid, (uint64_t)start));
}

/* _pid_start_time(pid, /): the start time in clock ticks, or None. */
static PyObject *
os_pid_start_time(PyObject *Py_UNUSED(module), PyObject *pid_obj)
{
    uint64_t pid, ticks = 0;
    if (!pid_arg(pid_obj, &pid)) {
        return NULL;
    }
    return dk__os_pid_start_ticks(pid, &ticks) < 0
               ? Py_NewRef(Py_None)
               : PyLong_FromUnsignedLongLong(ticks);
}

/* The UTF-8 of a name that obeys os.h's rule within max bytes; NULL with
 * TypeError or ValueError naming the rule broken. */
static const char *
checked_name(PyObject *name, Py_ssize_t max)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "name must be a str, not %s",
                     Py_TYPE(name)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (s == NULL) {
        return NULL; /* UnicodeEncodeError (a ValueError): a lone surrogate */
    }
    static const char *const broken[] = {
        [DK__OS_NAME_EMPTY] = "must be a non-empty string",
        [DK__OS_NAME_NUL] = "cannot contain NUL characters",
        [DK__OS_NAME_SLASH] = "cannot contain '/' characters",
        [DK__OS_NAME_UNPRINTABLE] =
            "cannot contain spaces or control characters",
        [DK__OS_NAME_DOTS] = "cannot be '.' or contain '..'",
    };
    int rule = 0;
    if (dk__os_name_check(s, (size_t)len, (size_t)max, 0, &rule) == 0) {
        return s;
    }
    if (rule == DK__OS_NAME_LONG) {
        PyErr_Format(PyExc_ValueError, "name too long (at most %zd bytes)",
                     max);
    } else {
        PyErr_Format(PyExc_ValueError, "name %s",
                     rule > 0 && rule <= DK__OS_NAME_DOTS
                         ? broken[rule]
                         : broken[DK__OS_NAME_UNPRINTABLE]);
    }
    return NULL;
}

/* _check_name(name, max_bytes, /): os.h's name rule. */
static PyObject *
os_check_name(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *name;
    Py_ssize_t max;
    if (!PyArg_ParseTuple(args, "On:_check_name", &name, &max)) {
        return NULL;
    }
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "max_bytes must be >= 1");
        return NULL;
    }
    return checked_name(name, max) == NULL ? NULL : Py_NewRef(Py_None);
}

/* An "O&" converter: the UTF-8 of a shared memory object's name that
 * obeys os.h's rule, into *(const char **)out. */
static int
shm_name(PyObject *obj, void *out)
{
    *(const char **)out = checked_name(obj, DK__OS_SHM_NAME_MAX);
    return *(const char **)out != NULL;
}

/* The fd (or 0) a call about "/NAME" returned, or its failure as os.open
 * raises it: OSError (FileExistsError, ... by errno), for -EPERM with the
 * uid of the owner refused where `owner` is given. */
static PyObject *
shm_result(int rc, const char *name, const uint32_t *owner)
{
    if (rc >= 0) {
        return PyLong_FromLong(rc);
    }
    PyObject *path = PyUnicode_FromFormat("/%s", name);
    if (path != NULL && rc == -EPERM && owner != NULL) {
        return dkpy_raise_call(
            PyExc_PermissionError,
            Py_BuildValue(
                "(iNN)", EPERM,
                PyUnicode_FromFormat("refusing shared memory owned by uid %u",
                                     (unsigned)*owner),
                path),
            NULL);
    }
    if (path != NULL) {
        errno = -rc;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        Py_DECREF(path);
    }
    return NULL;
}

/* _shm_create(name, mode, size, /): a new object "/NAME", exactly `mode`,
 * `size` bytes (sparse); its fd (the caller closes it). */
static PyObject *
os_shm_create(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *name;
    PyObject *size_obj;
    int mode;
    if (!PyArg_ParseTuple(args, "O&iO:_shm_create", shm_name, &name, &mode,
                          &size_obj)) {
        return NULL;
    }
    if (mode < 0 || mode > 07777) {
        PyErr_SetString(PyExc_ValueError, "mode must be within 0o7777");
        return NULL;
    }
    if (!PyLong_Check(size_obj)) {
        PyErr_Format(PyExc_TypeError, "size must be an int, not %s",
                     Py_TYPE(size_obj)->tp_name);
        return NULL;
    }
    /* An off_t, as os.ftruncate takes it: OverflowError past it. */
    long long size = PyLong_AsLongLong(size_obj);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must be >= 0");
        return NULL;
    }
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = dk__os_shm_create(name, (unsigned)mode, (uint64_t)size, 0);
    Py_END_ALLOW_THREADS
    return shm_result(fd, name, NULL);
}

/* _shm_open(name, ours, /): the fd of the existing object "/NAME", opened
 * read-write; with ours, one another user owns is a PermissionError. */
static PyObject *
os_shm_open(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *name;
    int ours;
    if (!PyArg_ParseTuple(args, "O&p:_shm_open", shm_name, &name, &ours)) {
        return NULL;
    }
    uint32_t owner = 0;
    int fd;
    Py_BEGIN_ALLOW_THREADS
    fd = dk__os_shm_open(name, ours ? DK__OS_SHM_OURS : 0, &owner);
    Py_END_ALLOW_THREADS
    return shm_result(fd, name, ours ? &owner : NULL);
}

/* _shm_unlink(name, /): remove "/NAME" (FileNotFoundError if absent). */
static PyObject *
os_shm_unlink(PyObject *Py_UNUSED(module), PyObject *name_obj)
{
    const char *name;
    if (!shm_name(name_obj, &name)) {
        return NULL;
    }
    int rc = dk__shm_unlink(name);
    return rc < 0 ? shm_result(rc, name, NULL) : Py_NewRef(Py_None);
}

static PyMethodDef os_functions[] = {
    {"_pid_alive", os_pid_alive, METH_VARARGS,
     "_pid_alive($module, pid, start_time=None, /)\n--\n\n"
     "Whether pid names a live process (not a zombie; 0 and negatives\n"
     "name none), started at start_time if given."},
    {"_pid_start_time", os_pid_start_time, METH_O,
     "_pid_start_time($module, pid, /)\n--\n\n"
     "The process's start time in clock ticks, or None."},
    {"_check_name", os_check_name, METH_VARARGS,
     "_check_name($module, name, max_bytes, /)\n--\n\n"
     "ValueError unless name is 1..max_bytes UTF-8 bytes without NUL,\n"
     "'/', '..', and is not '.'."},
    {"_shm_create", os_shm_create, METH_VARARGS,
     "_shm_create($module, name, mode, size, /)\n--\n\n"
     "Create shared memory /name with exactly mode; its fd."},
    {"_shm_open", os_shm_open, METH_VARARGS,
     "_shm_open($module, name, ours, /)\n--\n\n"
     "Open existing shared memory /name read-write; its fd."},
    {"_shm_unlink", os_shm_unlink, METH_O,
     "_shm_unlink($module, name, /)\n--\n\n"
     "Remove shared memory /name."},
    {NULL, NULL, 0, NULL},
};

int
dkpy_os_exec(PyObject *m)
{
    return PyModule_AddFunctions(m, os_functions);
}

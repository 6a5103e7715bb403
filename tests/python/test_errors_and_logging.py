"""Errors that no caller can catch reach sys.unraisablehook (a duplex
server's handler, on_init, an error handler that raises), and the library
logs what it does on its own under the "dispatchkit" logger: duplex
server stops, named mutexes taken over from dead holders, stale names
reclaimed. Real servers, clients and processes."""
import logging
import multiprocessing as mp
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import dispatchkit.sync as sync
import dispatchkit.zerobuffer as zb
from shm_names import channel_paths, fastipc_paths, unlink_all

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"


@pytest.fixture
def channel():
    n = f"dkerr-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield n
    unlink_all(channel_paths(n))


def wait_until(cond, timeout=20):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def records(caplog, text):
    return [r for r in caplog.records
            if r.name.startswith("dispatchkit") and text in r.getMessage()]


# ---- duplex servers -------------------------------------------------------

def test_seed_duplex_sample_shows_its_error(channel):
    # The seed's sample, only the import changed (and the channel name
    # made unique, as other runs may share this machine; the client's wait
    # for the response that never comes cut from 5 s to 1 s: the handler
    # fails, and says so, as soon as the request arrives).
    code = (EXAMPLES / "zerobuffer_duplex_seed.py").read_text()
    assert code.count('"my-service"') == 2
    code = code.replace('"my-service"', repr(channel))
    assert code.count("timeout_ms=5000") == 1
    code = code.replace("timeout_ms=5000", "timeout_ms=1000")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the response never came: the handler failed
    assert (f"Exception ignored in: <ImmutableDuplexServer {channel!r}"
            in r.stderr), r.stderr
    assert "Traceback" in r.stderr
    assert ("TypeError: process_request() takes 1 positional argument but "
            "2 were given" in r.stderr), r.stderr
    # Neither stop() nor close() is called: exit cleans up.
    for path in channel_paths(channel):
        assert not os.path.exists(path), path


def failing_handler(frame, writer):
    if bytes(frame.data) == b"boom":
        raise RuntimeError("the handler failed")
    writer.write_frame(bytes(frame.data).upper())


def test_handler_error_without_error_handler_is_unraisable(channel,
                                                           unraisable):
    server = zb.DuplexChannelFactory().create_immutable_server(
        channel, zb.BufferConfig(64, 4096))
    server.start(failing_handler)
    try:
        with zb.DuplexClient(channel) as client:
            client.send_request(b"boom")
            assert wait_until(lambda: unraisable)
            (info,) = unraisable
            assert info.exc_type is RuntimeError
            assert str(info.exc_value) == "the handler failed"
            assert info.object is server
            assert info.exc_traceback is not None
            # The server goes on serving.
            seq = client.send_request(b"ok")
            with client.receive_response(5000) as resp:
                assert resp.to_bytes() == b"OK" and resp.sequence == 1
                assert seq == 2  # the failed request had no response
    finally:
        server.stop()
    assert len(unraisable) == 1


def test_on_init_error_without_error_handler_is_unraisable(channel,
                                                           unraisable):
    server = zb.DuplexChannelFactory().create_immutable_server(
        channel, zb.BufferConfig(64, 4096))

    def on_init(metadata):
        raise ValueError(f"bad metadata {bytes(metadata)!r}")

    server.start(failing_handler, on_init=on_init)
    try:
        with zb.DuplexClient(channel) as client:
            client._request_writer.set_metadata(b"v=2")
            client.send_request(b"ok")
            with client.receive_response(5000) as resp:
                assert resp.to_bytes() == b"OK"
    finally:
        server.stop()
    assert [str(u.exc_value) for u in unraisable] == ["bad metadata b'v=2'"]


def test_error_handlers_get_errors_and_their_own_errors_are_unraisable(
        channel, unraisable):
    server = zb.DuplexChannelFactory().create_immutable_server(
        channel, zb.BufferConfig(64, 4096))
    seen = []

    def broken_error_handler(args):
        seen.append(args.exception)
        raise KeyError("the error handler failed too")

    server.add_error_handler(broken_error_handler)
    server.add_error_handler(lambda args: seen.append(args.exception))
    server.start(failing_handler)
    try:
        with zb.DuplexClient(channel) as client:
            client.send_request(b"boom")
            assert wait_until(lambda: len(seen) == 2 and unraisable)
            assert [str(e) for e in seen] == ["the handler failed"] * 2
            (info,) = unraisable
            assert info.exc_type is KeyError
            assert info.object is broken_error_handler
    finally:
        server.stop()


def test_server_stops_are_logged(channel, caplog, unraisable):
    caplog.set_level(logging.INFO, logger="dispatchkit")
    factory = zb.DuplexChannelFactory()
    server = factory.create_immutable_server(channel,
                                             zb.BufferConfig(64, 4096))
    server.start(failing_handler)
    client = factory.create_client(channel)
    client.send_request(b"x")
    client.receive_response(5000).dispose()
    client.close()
    assert wait_until(lambda: not server.is_running)
    server.stop()
    (rec,) = records(caplog, "stopped")
    assert rec.name == "dispatchkit.zerobuffer"
    assert rec.levelno == logging.INFO
    assert rec.getMessage() == (
        f"duplex server {channel!r} stopped: the client left or died "
        "(WriterDeadException)")
    # A client leaving is no error: nothing reached the hook.
    assert unraisable == []

    caplog.clear()
    server.start(failing_handler)
    server.stop()
    (rec,) = records(caplog, "stopped")
    assert rec.getMessage() == (f"duplex server {channel!r} stopped: "
                                "stop() was called")


def test_server_that_never_sees_a_client_says_why_it_stopped(channel, caplog,
                                                             unraisable):
    caplog.set_level(logging.INFO, logger="dispatchkit")
    server = zb.DuplexChannelFactory().create_immutable_server(
        channel, zb.BufferConfig(64, 4096), timeout=0.2)
    server.start(failing_handler)
    assert wait_until(lambda: not server.is_running)
    server.stop()
    (info,) = unraisable
    assert isinstance(info.exc_value, zb.ZeroBufferException)
    (rec,) = records(caplog, "stopped")
    assert "ZeroBufferException" in rec.getMessage()


def test_mode_given_second_as_in_the_seed(channel):
    server = zb.DuplexChannelFactory().create_immutable_server(
        channel, zb.BufferConfig(64, 4096))
    with pytest.raises(NotImplementedError):
        server.start(failing_handler, zb.ProcessingMode.THREAD_POOL)
    with pytest.raises(TypeError, match="on_init"):
        server.start(failing_handler, 42)
    assert not server.is_running
    server.start(failing_handler, zb.ProcessingMode.SINGLE_THREAD)
    try:
        with zb.DuplexClient(channel) as client:
            client.send_request(b"mode")
            with client.receive_response(5000) as resp:
                assert resp.to_bytes() == b"MODE"
    finally:
        server.stop()


def test_exit_with_a_running_server_and_open_client_cleans_up(channel):
    code = textwrap.dedent(f"""
        import dispatchkit.zerobuffer as zb
        f = zb.DuplexChannelFactory()
        s = f.create_immutable_server({channel!r}, zb.BufferConfig(64, 4096))
        s.start(lambda frame, w: w.write_frame(frame.data))
        c = f.create_client({channel!r})
        c.send_request(b"x")
        assert c.receive_response(5000).to_bytes() == b"x"
        print("served", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "served\n", r.stderr
    assert r.stderr == ""
    for path in channel_paths(channel):
        assert not os.path.exists(path), path


# ---- dispatchkit.sync ------------------------------------------------------

@pytest.fixture
def pid_root(tmp_path, monkeypatch):
    root = tmp_path / "pids"
    monkeypatch.setenv("FASTIPC_PID_DIR", str(root))
    return root


@pytest.fixture
def name():
    n = "dklog" + uuid.uuid4().hex[:12]
    yield n
    unlink_all(fastipc_paths(n, ("__pyfastipc_mutex_", "__pyfastipc_sema_")))


def _hold(name, q):
    m = sync.NamedMutex(name)
    m.acquire()
    q.put(os.getpid())
    time.sleep(60)


def test_named_mutex_takeover_is_logged(pid_root, name, caplog):
    caplog.set_level(logging.INFO, logger="dispatchkit")
    m = sync.NamedMutex(name)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold, args=(name, q))
    p.start()
    try:
        holder = q.get(timeout=60)
        assert m.acquire_ns(50_000_000) is False
        assert records(caplog, "taken over") == []
        os.kill(holder, signal.SIGKILL)
        p.join(30)
        assert m.acquire_ns(10_000_000_000) is True
        assert m.owner_died is True
        (rec,) = records(caplog, "taken over")
        assert rec.name == "dispatchkit.sync"
        assert rec.levelno == logging.WARNING
        assert name in rec.getMessage()
        m.release()
        # An ordinary acquisition logs nothing.
        with m:
            pass
        assert len(records(caplog, "taken over")) == 1
    finally:
        p.kill()
        p.join(30)
        m.close()


KILLED = """
import os, signal
from dispatchkit.sync import NamedSemaphore
s = NamedSemaphore({name!r}, initial=5)
s.wait()
print("holding", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_stale_name_reclaim_is_logged(pid_root, name, caplog):
    caplog.set_level(logging.INFO, logger="dispatchkit")
    p = subprocess.run([sys.executable, "-c", KILLED.format(name=name)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL and p.stdout == "holding\n"
    s = sync.NamedSemaphore(name, initial=1)
    try:
        assert s.value() == 1
        (rec,) = records(caplog, "reclaimed")
        assert rec.name == "dispatchkit.sync"
        assert rec.getMessage() == (
            f"shared memory '__pyfastipc_sema_{name}' reclaimed: every "
            "process that used it had died")
    finally:
        s.close()


def test_library_logging_is_silent_until_configured():
    handlers = logging.getLogger("dispatchkit").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_write_unraisable_rejects_what_is_not_an_exception(unraisable):
    from dispatchkit import _dk
    with pytest.raises(TypeError):
        _dk._write_unraisable("not an exception", None)
    with pytest.raises(TypeError):
        _dk._write_unraisable(ValueError())
    assert unraisable == []
    _dk._write_unraisable(ValueError("v"), threading)
    assert [(u.exc_type, u.object) for u in unraisable] == [
        (ValueError, threading)]

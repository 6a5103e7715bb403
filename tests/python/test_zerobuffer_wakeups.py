"""zerobuffer waits that are woken instead of polled: a reader waiting for
a writer, the duplex server's stop and its wait for a client."""
import threading
import time

import pytest

from dispatchkit import zerobuffer as zb
from dispatchkit.zerobuffer.duplex import DuplexChannelFactory
from zb_helpers import name  # noqa: F401


def test_is_writer_connected_waits_for_a_writer(name):
    with zb.Reader(name, zb.BufferConfig(1024, 4096)) as r:
        assert r.is_writer_connected(timeout_ms=20) is False
        assert r.is_writer_connected(timeout_ms=0) is False
        ws = []
        t = threading.Timer(0.05, lambda: ws.append(zb.Writer(name)))
        t.start()
        assert r.is_writer_connected(timeout_ms=30_000) is True
        t.join(10)
        ws[0].close()


def test_is_writer_connected_ends_when_closed(name):
    r = zb.Reader(name, zb.BufferConfig(1024, 4096))
    out = []
    th = threading.Thread(
        target=lambda: out.append(r.is_writer_connected(timeout_ms=60_000)))
    th.start()
    time.sleep(0.05)
    r.close()
    th.join(10)
    assert not th.is_alive() and out == [False]


def test_is_writer_connected_sees_a_peer_writer(name):
    zerobuffer = pytest.importorskip("zerobuffer")
    with zb.Reader(name, zb.BufferConfig(1024, 4096)) as r:
        ws = []
        t = threading.Timer(0.05,
                            lambda: ws.append(zerobuffer.Writer(name)))
        t.start()
        assert r.is_writer_connected(timeout_ms=30_000) is True
        t.join(10)
        ws[0].close()


def test_server_stop_is_clean_and_waits_for_client(name):
    factory = DuplexChannelFactory()
    server = factory.create_immutable_server(name,
                                             zb.BufferConfig(1024, 1 << 16),
                                             timeout=30)
    errors = []
    server.add_error_handler(lambda e: errors.append(e.exception))
    server.start(lambda f, w: w.write_frame(bytes(f.data).upper()))
    time.sleep(0.1)  # the server waits for its client
    client = factory.create_client(name)
    try:
        client.send_request(b"hi")
        resp = client.receive_response(10_000)
        assert resp.is_valid and resp.to_bytes() == b"HI"
        resp.dispose()
        server.stop()  # while the client is still connected
        assert not server.is_running
        assert errors == []  # stop() closing the read is no error
    finally:
        client.close()


def test_server_stop_before_any_client(name):
    factory = DuplexChannelFactory()
    server = factory.create_immutable_server(name,
                                             zb.BufferConfig(1024, 1 << 16),
                                             timeout=60)
    errors = []
    server.add_error_handler(lambda e: errors.append(e.exception))
    server.start(lambda f, w: None)
    time.sleep(0.05)
    t = server._thread
    server.stop()
    assert t is not None and not t.is_alive()
    assert errors == []

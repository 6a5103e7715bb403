"""Duplex (request/response) channels: two ordinary buffers,
``NAME_request`` (read by the server) and ``NAME_response`` (read by the
client), as zerobuffer-ipc lays them out, so a client of one
implementation talks to a server of the other.

Correlation is by sequence number: the server answers each request with
exactly one response, in order, so the n-th response carries the n-th
request's sequence.

Errors never vanish: an exception raised by a server's handler (or
on_init, or the server loop itself) goes to every error handler added
with ``add_error_handler``, or, when there is none, to
``sys.unraisablehook`` (by default printed to stderr with its traceback),
as CPython does with any error nobody can catch. An error handler that
raises goes to ``sys.unraisablehook`` too. A client that leaves or dies is
no error: error handlers hear of it (as with zerobuffer-ipc), and the
``dispatchkit.zerobuffer`` logger logs every server stop with its reason.
"""
import atexit
import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, List, Optional, Tuple

from dispatchkit import _dk

from .core import Frame, Reader, Writer
from .exceptions import (ReaderDeadException, WriterDeadException,
                         ZeroBufferException)
from .types import BufferConfig

_log = logging.getLogger("dispatchkit.zerobuffer")

# Servers and clients still open at interpreter exit. A running server's
# thread keeps it alive for ever (it is a daemon thread), so without this
# its buffers, and its client's, would stay in /dev/shm after exit.
_open_servers: "weakref.WeakSet[ImmutableDuplexServer]" = weakref.WeakSet()
_open_clients: "weakref.WeakSet[DuplexClient]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for server in list(_open_servers):
        server.stop()
    for client in list(_open_clients):
        client.close()

# The client's response buffer, as every peer sizes it.
RESPONSE_CONFIG = BufferConfig(metadata_size=4096,
                               payload_size=256 * 1024 * 1024)


class ProcessingMode(Enum):
    """How a server runs its handler."""
    SINGLE_THREAD = "single_thread"
    THREAD_POOL = "thread_pool"


class ErrorEventArgs:
    """What an error handler receives: the exception."""

    def __init__(self, exception: Exception) -> None:
        if not isinstance(exception, Exception):
            raise TypeError("exception must be an Exception instance")
        self._exception = exception

    @property
    def exception(self) -> Exception:
        return self._exception

    def __str__(self) -> str:
        return (f"ErrorEventArgs({type(self._exception).__name__}: "
                f"{self._exception})")

    def __repr__(self) -> str:
        return f"ErrorEventArgs(exception={self._exception!r})"


@dataclass
class DuplexResponse:
    """A response: its sequence and a zero-copy view of its data. An
    invalid response (timeout) has sequence 0 and data None."""
    sequence: int
    data: Optional[memoryview]
    _frame: Optional[Any] = None

    @property
    def is_valid(self) -> bool:
        return self.data is not None and len(self.data) > 0

    def to_bytes(self) -> bytes:
        return b"" if self.data is None else bytes(self.data)

    def __len__(self) -> int:
        return len(self.data) if self.data is not None else 0

    def dispose(self) -> None:
        if self._frame is not None:
            self._frame.dispose()
            self._frame = None

    def __enter__(self) -> "DuplexResponse":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.dispose()


class IDuplexClient(ABC):
    @abstractmethod
    def send_request(self, data: bytes) -> int: ...

    @abstractmethod
    def acquire_request_buffer(self, size: int) -> Tuple[int, memoryview]:
        ...

    @abstractmethod
    def commit_request(self) -> None: ...

    @abstractmethod
    def receive_response(self, timeout_ms: int) -> DuplexResponse: ...

    @abstractmethod
    def release_response(self, response: DuplexResponse) -> None: ...

    @property
    @abstractmethod
    def is_server_connected(self) -> bool: ...

    @abstractmethod
    def close(self) -> None: ...


class IDuplexServer(ABC):
    @abstractmethod
    def stop(self) -> None: ...

    @property
    @abstractmethod
    def is_running(self) -> bool: ...


class IImmutableDuplexServer(IDuplexServer):
    @abstractmethod
    def start(self, handler: Callable[[Frame, Writer], None],
              on_init: Optional[Callable[[memoryview], None]] = None,
              mode: ProcessingMode = ProcessingMode.SINGLE_THREAD) -> None:
        ...


class IMutableDuplexServer(IDuplexServer):
    """In-place request mutation: protocol v2, not implemented by anyone."""


class IDuplexChannelFactory(ABC):
    @abstractmethod
    def create_immutable_server(self, channel_name: str,
                                config: BufferConfig,
                                timeout: Optional[float] = None
                                ) -> IImmutableDuplexServer: ...

    @abstractmethod
    def create_client(self, channel_name: str) -> IDuplexClient: ...


class DuplexClient(IDuplexClient):
    """The client side: creates ``NAME_response`` and connects to the
    server's ``NAME_request``. Start the server first."""

    def __init__(self, channel_name: str) -> None:
        self._channel_name = channel_name
        self._lock = threading.Lock()
        self._closed = False
        self._pending = False
        self._response_reader = Reader(f"{channel_name}_response",
                                       RESPONSE_CONFIG)
        try:
            self._request_writer = Writer(f"{channel_name}_request")
        except BaseException:
            self._response_reader.close()
            raise
        _open_clients.add(self)

    def _check(self) -> None:
        if self._closed:
            raise ZeroBufferException("Client is closed")

    def send_request(self, data: bytes) -> int:
        """Copy a request into the request buffer; returns its sequence."""
        # No lock on this hot path: the Writer serialises its callers, and
        # refuses (ZeroBufferException) a write while a request from
        # acquire_request_buffer() waits for commit, or once closed, which
        # covers a race with those calls in another thread.
        if self._closed:
            raise ZeroBufferException("Client is closed")
        if self._pending:
            raise ZeroBufferException("Previous request not committed")
        return self._request_writer.write_frame(data)

    def acquire_request_buffer(self, size: int) -> Tuple[int, memoryview]:
        """(sequence, writable view) of a request to fill in place; send
        it with commit_request()."""
        with self._lock:
            self._check()
            if self._pending:
                raise ZeroBufferException("Previous request not committed")
            seq, view = self._request_writer.get_frame_buffer_with_sequence(
                size)
            self._pending = True
            return seq, view

    def commit_request(self) -> None:
        with self._lock:
            self._check()
            if not self._pending:
                raise ZeroBufferException("No pending request to commit")
            self._pending = False
            self._request_writer.commit_frame()

    def receive_response(self, timeout_ms: int) -> DuplexResponse:
        """The next response, or an invalid one after timeout_ms."""
        if self._closed:
            raise ZeroBufferException("Client is closed")
        frame = self._response_reader.read_frame(timeout_ms / 1000.0)
        if frame is None:
            return DuplexResponse(0, None)
        # Positional: a keyword call costs this round trip's hot path
        # several hundred nanoseconds.
        return DuplexResponse(frame.sequence, frame.data, frame)

    def release_response(self, response: DuplexResponse) -> None:
        response.dispose()

    @property
    def is_server_connected(self) -> bool:
        if self._closed:
            return False
        return (self._request_writer.is_reader_connected()
                and self._response_reader.is_writer_connected())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._request_writer.close()
            self._response_reader.close()
        _open_clients.discard(self)

    def __enter__(self) -> "DuplexClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ImmutableDuplexServer(IImmutableDuplexServer):
    """The server side: creates ``NAME_request`` when started, connects to
    the client's ``NAME_response`` and calls ``handler(frame, writer)``
    for each request in a background thread; the handler writes exactly
    one response with ``writer.write_frame(...)``."""

    def __init__(self, channel_name: str, config: BufferConfig,
                 timeout: Optional[float] = None) -> None:
        self._channel_name = channel_name
        self._config = config
        self._timeout = 5.0 if timeout is None else float(timeout)
        self._lock = threading.Lock()
        self._running = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._request_reader: Optional[Reader] = None
        self._response_writer: Optional[Writer] = None
        self._error_handlers: List[Callable[[ErrorEventArgs], None]] = []

    @property
    def request_reader(self) -> Optional[Reader]:
        return self._request_reader

    @property
    def is_running(self) -> bool:
        return self._running

    def add_error_handler(self,
                          handler: Callable[[ErrorEventArgs], None]) -> None:
        with self._lock:
            if handler not in self._error_handlers:
                self._error_handlers.append(handler)

    def remove_error_handler(
            self, handler: Callable[[ErrorEventArgs], None]) -> None:
        with self._lock:
            if handler in self._error_handlers:
                self._error_handlers.remove(handler)

    def _report(self, exc: Exception, departure: bool = False) -> None:
        """Hand exc to the error handlers; with none, to
        sys.unraisablehook, unless it only says that the client left
        (departure), which the stop's log line records."""
        with self._lock:
            handlers = list(self._error_handlers)
        if not handlers:
            if not departure:
                _dk._write_unraisable(exc, self)
            return
        args = ErrorEventArgs(exc)
        for h in handlers:
            try:
                h(args)
            except Exception as e:
                _dk._write_unraisable(e, h)

    def start(self, handler: Callable[[Frame, Writer], None],
              on_init: Optional[Callable[[memoryview], None]] = None,
              mode: ProcessingMode = ProcessingMode.SINGLE_THREAD) -> None:
        """Create the request buffer and serve in a background thread."""
        with self._lock:
            if self._running:
                raise ZeroBufferException("Server is already running")
            if isinstance(on_init, ProcessingMode):
                # The seed's sample (and zerobuffer-ipc's DUPLEX_CHANNEL.md)
                # pass the mode second: take it as the mode it is.
                on_init, mode = None, on_init
            if on_init is not None and not callable(on_init):
                raise TypeError("on_init must be callable or None")
            if mode == ProcessingMode.THREAD_POOL:
                raise NotImplementedError(
                    "THREAD_POOL mode is not yet implemented")
            if mode != ProcessingMode.SINGLE_THREAD:
                raise ValueError(f"Invalid processing mode: {mode}")
            if not callable(handler):
                raise TypeError("handler must be callable")
            # Created here, not in the thread, so a client may connect as
            # soon as start() returns.
            self._request_reader = Reader(f"{self._channel_name}_request",
                                          self._config)
            self._stop.clear()
            self._running = True
            _open_servers.add(self)
            self._thread = threading.Thread(
                target=self._serve, args=(handler, on_init),
                name=f"zerobuffer-server-{self._channel_name}", daemon=True)
            self._thread.start()

    def _connect_response(self) -> Optional[Writer]:
        end = time.monotonic() + self._timeout
        # A client creates its response buffer before it connects to our
        # request buffer, so wait (woken by the connection, no polling) for
        # its writer here first; stop() closes the reader, which ends the
        # wait at once.
        reader = self._request_reader
        left = end - time.monotonic()
        if reader is not None and left > 0:
            reader.is_writer_connected(timeout_ms=max(1, int(left * 1000)))
        while not self._stop.is_set():
            try:
                return Writer(f"{self._channel_name}_response")
            except ZeroBufferException:
                if time.monotonic() >= end:
                    raise
                self._stop.wait(0.02)
        return None

    def _serve(self, handler: Callable[[Frame, Writer], None],
               on_init: Optional[Callable[[memoryview], None]]) -> None:
        reader = self._request_reader
        assert reader is not None  # set by start() before this thread
        why = "stop() was called"
        try:
            writer = self._connect_response()
            if writer is None:
                return
            self._response_writer = writer
            stopping = self._stop.is_set
            read = reader.read_frame
            while not stopping():
                try:
                    # No slices: stop() closes the reader, which wakes
                    # this read at once.
                    frame = read(None)
                    if frame is None:
                        continue
                    if on_init is not None:
                        init, on_init = on_init, None
                        metadata = reader.get_metadata()
                        if metadata is not None:
                            try:
                                init(metadata)
                            except Exception as e:
                                self._report(e)
                            finally:
                                metadata.release()
                    with frame:
                        handler(frame, writer)
                except (ReaderDeadException, WriterDeadException) as e:
                    if not self._stop.is_set():
                        why = ("the client left or died "
                               f"({type(e).__name__})")
                        self._report(e, departure=True)
                    break
                except Exception as e:
                    if self._stop.is_set() and reader.closed:
                        break  # stop() closed the reader under the read
                    self._report(e)
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            self._report(e)
        finally:
            self._running = False
            self._cleanup()
            _log.info("duplex server %r stopped: %s", self._channel_name,
                      why)

    def _cleanup(self) -> None:
        w, self._response_writer = self._response_writer, None
        if w is not None:
            w.close()
        r = self._request_reader
        if r is not None:
            r.close()

    def stop(self) -> None:
        """Stop serving and remove the request buffer."""
        self._stop.set()
        r = self._request_reader
        if r is not None:
            r.close()  # wakes the serving thread's read at once
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)
        self._thread = None
        self._running = False
        self._cleanup()
        _open_servers.discard(self)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return (f"<{type(self).__name__} {self._channel_name!r} "
                f"{state}>")

    def __enter__(self) -> "ImmutableDuplexServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DuplexChannelFactory(IDuplexChannelFactory):
    """Creates servers and clients of duplex channels."""
    _instance: Optional["DuplexChannelFactory"] = None

    @classmethod
    def get_instance(cls) -> "DuplexChannelFactory":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def create_immutable_server(self, channel_name: str,
                                config: BufferConfig,
                                timeout: Optional[float] = None
                                ) -> ImmutableDuplexServer:
        return ImmutableDuplexServer(channel_name, config, timeout)

    def create_mutable_server(self, channel_name: str,
                              config: BufferConfig) -> Any:
        raise NotImplementedError("MutableDuplexServer is planned for v2.0")

    def create_client(self, channel_name: str) -> DuplexClient:
        return DuplexClient(channel_name)

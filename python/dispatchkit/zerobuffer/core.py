"""Reader and Writer: thin Python layers over the C types, adding the
zerobuffer-ipc spellings that are easiest in Python (timedelta write
timeouts, polling is_writer_connected)."""
from datetime import timedelta
from typing import AsyncIterator, Optional, Tuple, Union

from dispatchkit import _dk

from .exceptions import InvalidFrameSizeException

Frame = _dk.ZbFrame
Buffer = Union[bytes, bytearray, memoryview]


class Reader(_dk.ZbReader):
    """Reader(name, config=None, mode=0o600)

    Creates the buffer ``name`` (shared memory ``/dev/shm/name``, the
    semaphores ``sem-w-name`` and ``sem-r-name``, the lock file
    ``/tmp/zerobuffer/name.lock``) and reads frames from it. A reader
    that crashed under the same name is replaced. ``mode=0o666`` gives
    the peers' permissions, for a writer running as another user.
    """

    def is_writer_connected(self, timeout_ms: Optional[int] = None) -> bool:
        """Whether a live writer is connected; with timeout_ms, wait up to
        that long for one. Our writers wake the wait as they connect; a
        peer's writer (which makes no wake-up) is seen within 50 ms."""
        if timeout_ms is None:
            return self._writer_alive()
        if self._writer_alive():
            return True
        if timeout_ms <= 0:
            return False
        return self._wait_writer(timeout_ms / 1000.0)

    def __aiter__(self) -> "AsyncIterator[Frame]":
        """``async for frame in reader``: see dispatchkit.asyncio.frames."""
        from dispatchkit.asyncio import frames
        return frames(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.frames_read} frames"
        return f"<Reader {self.name!r} {state}>"


class Writer(_dk.ZbWriter):
    """Writer(name)

    Connects to the buffer ``name`` created by a Reader (ours or any
    zerobuffer-ipc peer) and writes frames into it.
    """

    @property
    def write_timeout(self) -> timedelta:
        """How long a write waits for space before BufferFullException."""
        return timedelta(seconds=self._write_timeout_s)

    @write_timeout.setter
    def write_timeout(self, value: Union[timedelta, float]) -> None:
        if isinstance(value, timedelta):
            value = value.total_seconds()
        if not 0 < value <= 1e9:  # NaN too
            raise ValueError("Write timeout must be positive")
        self._write_timeout_s = value

    def write_frame_zero_copy(self, data: Buffer) -> int:
        """Write a frame from any buffer without an intermediate copy
        (the one copy into shared memory is unavoidable)."""
        return self.write_frame(data)

    def get_frame_buffer_with_sequence(self,
                                       size: int) -> Tuple[int, memoryview]:
        """get_frame_buffer() that also returns the frame's sequence."""
        if size <= 0:
            raise InvalidFrameSizeException()
        return self._acquire(size)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.frames_written} frames"
        return f"<Writer {self.name!r} {state}>"

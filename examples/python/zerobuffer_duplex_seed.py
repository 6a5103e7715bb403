"""The zerobuffer-ipc seed's "Duplex Channel Support" sample with only the
imports changed. As written it cannot work, with zerobuffer-ipc either:
its handler takes one argument where servers call ``handler(frame,
response_writer)``, and ``process_data`` is not defined. What matters is
that the failure shows: the handler's TypeError reaches
``sys.unraisablehook`` (printed to stderr with its traceback) instead of
leaving the client to time out in silence. A working duplex example is in
docs/zerobuffer.md."""
from dispatchkit.zerobuffer.duplex import DuplexChannelFactory, ProcessingMode
from dispatchkit.zerobuffer import BufferConfig

# Server side
factory = DuplexChannelFactory()
server = factory.create_immutable_server("my-service", BufferConfig(4096, 10*1024*1024))

def process_request(frame):
    """Process request and return response"""
    # Frame is automatically disposed via RAII
    data = bytes(frame.data)
    result = process_data(data)
    return result

server.start(process_request, ProcessingMode.SINGLE_THREAD)

# Client side
client = factory.create_client("my-service")
sequence = client.send_request(b"request data")
response = client.receive_response(timeout_ms=5000)

if response.is_valid and response.sequence == sequence:
    with response:  # Context manager for RAII
        print(f"Response: {bytes(response.data)}")

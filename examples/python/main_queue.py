"""The main queue, drained by the main thread (and from asyncio)."""
import asyncio

import dispatchkit as cygcd

main = cygcd.Queue.main_queue()
main.run_async(lambda: print("ran on the main thread"))
cygcd.drain_main_queue()


async def with_asyncio():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(cygcd.main_queue_fd(), cygcd.drain_main_queue)
    cygcd.Queue.global_queue().run_async(
        lambda: main.run_async(lambda: done.set_result("via asyncio")))
    print(await done)
    loop.remove_reader(cygcd.main_queue_fd())

asyncio.run(with_asyncio())

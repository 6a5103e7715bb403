"""Creating and activating inactive queues."""
import dispatchkit as cygcd

q = cygcd.Queue("lazy", inactive=True)
print(q.is_inactive)  # True
q.run_async(lambda: print("Waiting to run..."))
q.set_target_queue(cygcd.Queue.global_queue())
q.activate()
print(q.is_inactive)  # False
q.run_sync(lambda: None)

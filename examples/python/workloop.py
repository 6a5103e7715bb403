"""Priority-inversion-avoiding workloops."""
import dispatchkit as cygcd

wl = cygcd.Workloop("com.example.workloop")
wl.run_async(lambda: print("Async task"))
wl.run_sync(lambda: print("Sync task"))

inactive_wl = cygcd.Workloop("lazy", inactive=True)
inactive_wl.set_autorelease_frequency(cygcd.AUTORELEASE_FREQUENCY_WORK_ITEM)
inactive_wl.activate()  # now ready for work
inactive_wl.run_sync(lambda: print("Running!"))

"""Repeating and one-shot timers."""
import dispatchkit as cygcd

ticks = cygcd.Semaphore(0)
count = 0


def tick():
    global count
    count += 1
    print(f"Tick {count}")
    ticks.signal()


timer = cygcd.Timer(0.05, tick)
timer.start()
for _ in range(3):
    ticks.wait()
timer.cancel()

done = cygcd.Semaphore(0)
one_shot = cygcd.Timer(0.1, lambda: (print("Done!"), done.signal()),
                       repeating=False)
one_shot.start()
done.wait()
one_shot.cancel()

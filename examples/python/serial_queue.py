"""Serial FIFO execution: tasks run one at a time, in submission order."""
import dispatchkit as cygcd

q = cygcd.Queue("com.example.serial")
results = []
for i in range(5):
    q.run_async(lambda i=i: results.append(i))
q.run_sync(lambda: results.append("sync"))
print(results)  # [0, 1, 2, 3, 4, 'sync']

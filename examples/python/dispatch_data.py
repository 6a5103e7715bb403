"""Buffer management with Data objects."""
import dispatchkit as cygcd

data = cygcd.Data(b"Hello, World!")
print(len(data))  # 13
print(bytes(data))  # b'Hello, World!'

part1 = cygcd.Data(b"Hello, ")
part2 = cygcd.Data(b"World!")
combined = part1.concat(part2)  # shares both buffers
print(bytes(combined), combined.regions)

message = cygcd.Data(b"The quick brown fox")
word = message.subrange(4, 5)  # b"quick"
print(bytes(word))

region, offset = combined.copy_region(9)
print(bytes(region), offset)
combined.apply(lambda off, chunk: print(off, chunk))

"""One-time initialization."""
import dispatchkit as cygcd

once = cygcd.Once()
initialized = False


def init():
    global initialized
    initialized = True
    print("Initialized!")


once(init)
once(init)
once(init)
print(f"initialized={initialized}")

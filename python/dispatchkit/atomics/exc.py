"""The exceptions of the atomics API, with its constructor arguments and
messages."""


class AlignmentError(Exception):
    def __init__(self, width, address, *, using_recommended=True):
        self.width = width
        self.address = address
        self.using_recommended = using_recommended
        kind = "recommended" if using_recommended else "minimum"
        super().__init__(
            f"The alignment of address {address:#x} does not meet the {kind} "
            f"alignment requirements for an object of width {width}.")


class MemoryOrderError(Exception):
    def __init__(self, optype, order, *, is_fail=False):
        self.optype = optype
        self.order = order
        self.is_fail = is_fail
        what = "fail" if is_fail else ""
        name = getattr(order, "name", str(order))
        opname = getattr(optype, "name", str(optype))
        super().__init__(f"{name} is not a valid {what} memory order for a "
                         f"{opname} operation.")


class UnsupportedWidthException(Exception):
    def __init__(self, width, *, readonly=False):
        self.width = width
        self.readonly = readonly
        ro = "readonly " if readonly else ""
        super().__init__(f"No operations are supported on {ro}objects with "
                         f"a width of {width}.")


class UnsupportedOperationException(Exception):
    def __init__(self, optype, width, *, readonly=False):
        self.optype = optype
        self.width = width
        self.readonly = readonly
        ro = "readonly " if readonly else ""
        name = getattr(optype, "name", str(optype))
        super().__init__(f"Operation {name} is not supported on {ro}objects "
                         f"with a width of {width}.")

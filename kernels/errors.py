"""The error a kernel or its reference raises for an input it cannot take."""


class KernelInputError(ValueError):
    """A bad shape, dtype, device or value (or a head layout the kernel does not implement)."""

"""The project's own pause image: the sandbox container of a CRI pod, built without a registry.

Imports point one way: ``asm`` (instruction encoders) <- ``elf`` (the pause program and its ELF
file) <- ``image`` (the OCI image around it, written with :mod:`ctrpy.testimage`); ``__main__``
is the command line. Standard library and ``ctrpy.testimage`` only: the daemon imports this
lazily, at the first sandbox.
"""

from ctrpy.pause.elf import pause_executable

__all__ = ["pause_executable"]

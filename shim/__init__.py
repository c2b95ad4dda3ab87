"""ctrpy-shim, one process per container (installed as ``ctrpy.shim``)."""

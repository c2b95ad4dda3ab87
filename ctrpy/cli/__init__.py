"""The ``ctrpy`` command line: noun-verb commands in the manner of containerd's ``ctr``."""

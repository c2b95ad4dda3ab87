"""ctrpy: a container manager wire-compatible with containerd."""

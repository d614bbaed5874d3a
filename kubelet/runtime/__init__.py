"""kubelite's container runtime: Pod sandboxes and containers on Linux namespaces, cgroups
and overlayfs (NativeRuntime), or on runc through an OCI bundle (RuncRuntime), both behind
the ContainerRuntime protocol of interface.py. Log readers for `kctl logs` are in logs.py.
"""

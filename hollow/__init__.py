"""Hollow nodes: a load tool that makes one process look like thousands of nodes.

Like Kubernetes' kubemark, `python -m hollow --nodes N` registers N Nodes,
renews their Leases and marks the Pods bound to them Running with a Pod IP,
without starting any container. The scheduler and the controllers see
ordinary nodes, so they can be tested and benchmarked at a scale one machine
could never run for real. It is a client of the API server like any kubelet
and is never part of a cluster's product path.

Scale comes from never giving a node a task of its own: every API call goes
through one Pipeline with a bounded number in flight (64 by default), Lease
renewals are spread evenly over the renewal interval by one ticker, and
Pods arrive through one watch of all Pods, filtered here.
"""

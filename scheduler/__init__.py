"""kubelite's scheduler: places pending Pods on Nodes, one decision at a time.

The decision core is pure and deterministic, structured as kube-scheduler's
framework is:

  podinfo      a Pod parsed once (requests, tolerations, affinity, ports, owner)
  framework    Status, NodeInfo, CycleState, cluster events, the plugin Protocols
  plugins/     one module per filter or score plugin, registered in one list
  algorithm    schedule_one(pod, snapshot): filter, score, choose; FitError messages
  cache        nodes and Pods, assumed Pods, incremental snapshots
  queue        active / back-off / unschedulable queues, moves on cluster events
  handlers     watch events -> cache and queue
  cycle        SchedulerCore: the synchronous half of one cycle and its follow-ups

The loop that pops Pods, binds them through the API and writes conditions and
Events lives in scheduler.main, with leader election.
"""

"""The kubelet: the node agent that turns the Pods bound to its node into containers.

    python -m kubelet.main --server API --node-name NAME --node-ip IP [...]   (main.py)

Parts, each behind a small seam handed in through the Kubelet's constructor (agent.py):
- runtime/ (ContainerRuntime, CRI-shaped) and images/ (ImageStore, ImagePuller): the
  container runtime and the image store of this project, used through cri.AsyncRuntime
  (thread pool, metrics, a shared relist snapshot) and imagemanager.ImageManager;
- network.PodNetwork: the Pod network (LoopbackNetwork by default, podnet/ for the bridge);
- machinery.clock.Clock and the API client.

What runs: node.NodeAgent (registration, status, Lease), one podworker.PodWorker per Pod
(sandbox, volumes.py, containers.py, probes.py, status.py, statusmanager.py), the relist
that notices dead containers (agent.py), server.KubeletService (logs and exec for the API
server's Streams relay), usage.UsageReporter (figures for kctl top) and metrics.py.
"""

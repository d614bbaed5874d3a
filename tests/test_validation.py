"""Validation rules, one table row per rule, with the exact path and message of the error.

Realistic manifests of every kind must pass as written (after server-side
defaults). Each rule case starts from a small valid object of its kind, applies
one change after defaulting (so that defaults cannot mask the change), and
expects exactly one cause: its field path, its Kubernetes cause type and the
start of its message.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import random
import re
from typing import Any

import fastjsonschema
import jsonschema
import pytest
import yaml

from machinery import defaults, errors, kinds, validation

# -- manifests that must pass ----------------------------------------------------------------

DEPLOYMENT_YAML = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app.kubernetes.io/name: web
    app.kubernetes.io/part-of: shop
  annotations:
    kubernetes.io/change-cause: "image httpd 2.4.58"
spec:
  replicas: 3
  revisionHistoryLimit: 5
  minReadySeconds: 5
  selector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [frontend]}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: "0%"}
  template:
    metadata:
      labels: {app: web, tier: frontend}
      annotations: {prometheus.io/scrape: "true"}
    spec:
      serviceAccountName: web
      imagePullSecrets: [{name: registry-cred}]
      initContainers:
      - name: migrate
        image: registry.local:5000/shop/migrate@sha256:<digest>
        command: [/bin/migrate, --to=latest]
        envFrom:
        - configMapRef: {name: web-config}
      containers:
      - name: httpd
        image: httpd:2.4.58
        ports:
        - {name: http, containerPort: 80}
        - {name: metrics, containerPort: 9090, protocol: TCP}
        env:
        - name: LOG_LEVEL
          valueFrom: {configMapKeyRef: {name: web-config, key: log.level}}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: APP_LABEL
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}
        - name: MEMORY_LIMIT
          valueFrom:
            resourceFieldRef: {containerName: httpd, resource: limits.memory, divisor: 1Mi}
        - name: API_TOKEN
          valueFrom: {secretKeyRef: {name: web-secrets, key: token, optional: true}}
        - {name: GREETING, value: "hello world"}
        envFrom:
        - prefix: CFG_
          configMapRef: {name: web-config, optional: false}
        resources:
          requests: {cpu: 250m, memory: 64Mi}
          limits: {cpu: "1", memory: 256Mi, ephemeral-storage: 1Gi}
        readinessProbe:
          httpGet:
            path: /healthz
            port: http
            httpHeaders: [{name: X-Probe, value: ready}]
          initialDelaySeconds: 2
          periodSeconds: 5
        livenessProbe:
          tcpSocket: {port: 80}
          failureThreshold: 5
        startupProbe:
          exec: {command: [cat, /tmp/started]}
          failureThreshold: 30
          periodSeconds: 2
        lifecycle:
          preStop:
            exec: {command: [/bin/sh, -c, "sleep 5"]}
        volumeMounts:
        - {name: content, mountPath: /usr/local/apache2/htdocs, readOnly: true}
        - {name: cache, mountPath: /var/cache/httpd}
        - {name: config, mountPath: /etc/httpd/conf.d/extra.conf, subPath: extra.conf}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          runAsUser: 1000
          capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
          seccompProfile: {type: RuntimeDefault}
      volumes:
      - name: content
        configMap:
          name: web-content
          items: [{key: index.html, path: index.html, mode: 0444}]
      - name: cache
        emptyDir: {medium: Memory, sizeLimit: 64Mi}
      - name: config
        configMap: {name: web-config, defaultMode: 0644}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: kubernetes.io/os, operator: In, values: [linux]}
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 50
            preference:
              matchExpressions:
              - {key: node.kubernetes.io/instance-type, operator: NotIn, values: [small]}
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: web}}
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute,
         tolerationSeconds: 60}
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: ScheduleAnyway
        labelSelector: {matchLabels: {app: web}}
      terminationGracePeriodSeconds: 45
      securityContext: {fsGroup: 2000, runAsGroup: 3000}
      nodeSelector: {kubernetes.io/arch: amd64}
"""

# What `kubectl create deployment --dry-run=client -o yaml` prints, nulls and all.
GENERATED_DEPLOYMENT_YAML = """
apiVersion: apps/v1
kind: Deployment
metadata:
  creationTimestamp: null
  labels: {app: httpd-app}
  name: httpd-app
spec:
  replicas: 2
  selector:
    matchLabels: {app: httpd-app}
  strategy: {}
  template:
    metadata:
      creationTimestamp: null
      labels: {app: httpd-app}
    spec:
      containers:
      - image: httpd
        name: httpd
        resources: {}
status: {}
"""

SLEEPER_POD_YAML = """
apiVersion: v1
kind: Pod
metadata:
  name: busybox-sleep
  labels: {run: busybox-sleep}
spec:
  restartPolicy: Never
  hostname: sleeper
  subdomain: batch
  hostAliases:
  - {ip: 10.0.0.5, hostnames: [db.local]}
  dnsPolicy: None
  dnsConfig:
    nameservers: [10.96.0.10]
    searches: [default.svc.cluster.local, svc.cluster.local]
    options: [{name: ndots, value: "5"}]
  shareProcessNamespace: true
  activeDeadlineSeconds: 3600
  initContainers:
  - name: log-shipper
    image: busybox:1.36
    restartPolicy: Always
    command: [sh, -c, "tail -F /logs/app.log"]
    readinessProbe:
      exec: {command: [test, -f, /logs/app.log]}
    volumeMounts: [{name: logs, mountPath: /logs}]
  containers:
  - name: busybox
    image: busybox
    args: [sleep, "3600"]
    stdin: true
    tty: true
    workingDir: /work
    resources:
      limits: {cpu: 500m, memory: 128Mi, example.com/gpu: "1"}
    volumeMounts:
    - {name: logs, mountPath: /logs}
    - {name: host-time, mountPath: /etc/localtime, readOnly: true}
    - {name: projected, mountPath: /etc/podinfo}
    securityContext:
      privileged: true
      procMount: Default
      capabilities: {add: [SYS_ADMIN]}
  volumes:
  - name: logs
  - name: host-time
    hostPath: {path: /etc/localtime, type: File}
  - name: projected
    projected:
      sources:
      - downwardAPI:
          items:
          - path: labels
            fieldRef: {fieldPath: metadata.labels}
      - configMap:
          name: sleeper-config
          items: [{key: settings.ini, path: settings.ini}]
      - serviceAccountToken: {path: token, expirationSeconds: 3600}
  securityContext:
    runAsUser: 0
    sysctls: [{name: net.ipv4.ip_local_port_range, value: "1024 65000"}]
    seccompProfile: {type: Localhost, localhostProfile: profiles/audit.json}
  readinessGates: [{conditionType: example.com/feature-ready}]
  priority: 1000
  priorityClassName: batch-low
  enableServiceLinks: false
  automountServiceAccountToken: false
"""

RUNNING_POD_YAML = """
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9c5b6f4-x2kq8
  generateName: web-7d9c5b6f4-
  namespace: shop
  uid: 6f1c2b9e-3d4a-4b5c-8d7e-1f2a3b4c5d6e
  resourceVersion: "1234"
  generation: 1
  creationTimestamp: "2024-05-01T12:00:00Z"
  labels: {app: web, pod-template-hash: 7d9c5b6f4}
  ownerReferences:
  - apiVersion: apps/v1
    kind: ReplicaSet
    name: web-7d9c5b6f4
    uid: 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d
    controller: true
    blockOwnerDeletion: true
  finalizers: [example.com/drain-connections]
spec:
  nodeName: node-1
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  containers:
  - name: httpd
    image: httpd:2.4
    ports: [{containerPort: 8080, hostPort: 8080, hostIP: 192.168.1.10}]
    livenessProbe:
      grpc: {port: 9000}
  tolerations:
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute,
     tolerationSeconds: 300}
  - {key: dedicated, operator: Equal, value: web, effect: NoSchedule}
  - {operator: Exists}
status:
  phase: Running
  conditions:
  - {type: PodScheduled, status: "True", lastProbeTime: null,
     lastTransitionTime: "2024-05-01T12:00:00Z"}
  - {type: Initialized, status: "True", lastTransitionTime: "2024-05-01T12:00:01Z"}
  - {type: ContainersReady, status: "True", lastTransitionTime: "2024-05-01T12:00:03Z"}
  - {type: Ready, status: "True", lastTransitionTime: "2024-05-01T12:00:03Z"}
  hostIP: 192.168.1.10
  hostIPs: [{ip: 192.168.1.10}]
  podIP: 192.168.1.10
  podIPs: [{ip: 192.168.1.10}]
  startTime: "2024-05-01T12:00:00Z"
  qosClass: BestEffort
  containerStatuses:
  - name: httpd
    ready: true
    started: true
    restartCount: 1
    image: registry.local/library/httpd:2.4
    imageID: registry.local/library/httpd@sha256:<digest>
    containerID: kubelite://3b2a1c
    state:
      running: {startedAt: "2024-05-01T12:00:02Z"}
    lastState:
      terminated:
        exitCode: 137
        reason: OOMKilled
        startedAt: "2024-05-01T12:00:01Z"
        finishedAt: "2024-05-01T12:00:02.123456Z"
        containerID: kubelite://0f9e8d
"""

REPLICASET_YAML = """
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-7d9c5b6f4
  namespace: shop
  labels: {app: web, pod-template-hash: 7d9c5b6f4}
  annotations: {deployment.kubernetes.io/revision: "3"}
  ownerReferences:
  - {apiVersion: apps/v1, kind: Deployment, name: web, uid: 11111111-2222-4333-8444-555555555555,
     controller: true, blockOwnerDeletion: true}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web, pod-template-hash: 7d9c5b6f4}
  template:
    metadata:
      labels: {app: web, pod-template-hash: 7d9c5b6f4}
    spec:
      containers:
      - name: httpd
        image: httpd:2.4
        ports: [{containerPort: 80, name: http}]
status:
  replicas: 2
  fullyLabeledReplicas: 2
  readyReplicas: 1
  availableReplicas: 1
  observedGeneration: 4
"""

SERVICE_YAML = """
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9090, targetPort: 9090, protocol: TCP, appProtocol: http}
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP: {timeoutSeconds: 600}
"""

NODEPORT_SERVICE_YAML = """
apiVersion: v1
kind: Service
metadata: {name: web-public, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.42
  clusterIPs: [10.96.0.42]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  externalTrafficPolicy: Local
  externalIPs: [192.168.1.100]
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30080}
status:
  loadBalancer: {}
"""

HEADLESS_SERVICE_YAML = """
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: db}
"""

EXTERNAL_SERVICE_YAML = """
apiVersion: v1
kind: Service
metadata: {name: upstream}
spec:
  type: ExternalName
  externalName: api.example.com
"""

ENDPOINTS_YAML = """
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: shop
  labels: {app: web}
subsets:
- addresses:
  - ip: 10.244.1.7
    nodeName: node-1
    targetRef: {kind: Pod, namespace: shop, name: web-7d9c5b6f4-x2kq8,
                uid: 6f1c2b9e-3d4a-4b5c-8d7e-1f2a3b4c5d6e}
  - {ip: 10.244.2.3, hostname: web-1, nodeName: node-2}
  notReadyAddresses:
  - {ip: 10.244.3.9, nodeName: node-3}
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: metrics, port: 9090, appProtocol: http}
"""

CONFIGMAP_YAML = """
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: shop}
data:
  log.level: info
  extra.conf: |
    ServerName web.shop
    KeepAlive On
  index.html: "<h1>hello</h1>"
binaryData:
  favicon.ico: AAABAAEAEBAAAAEAIABoBAAAFgAAACgAAAAQAAAAIAAAAAEAIAAAAAAAAAQAAA==
immutable: false
"""

NODE_YAML = """
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    kubernetes.io/hostname: node-1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node-role.kubernetes.io/control-plane: ""
  annotations: {node.alpha.kubernetes.io/ttl: "0"}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24]
  providerID: kubelite://node-1
  unschedulable: false
  taints:
  - {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}
  - {key: node.kubernetes.io/unreachable, effect: NoExecute, timeAdded: "2024-05-01T12:00:00Z"}
status:
  capacity: {cpu: "2", memory: 4025840Ki, pods: "20", ephemeral-storage: 30Gi, hugepages-2Mi: "0"}
  allocatable: {cpu: 1900m, memory: 3.5Gi, pods: "20", ephemeral-storage: 28Gi}
  conditions:
  - {type: Ready, status: "True", reason: KubeletReady, message: kubelet is posting ready status,
     lastHeartbeatTime: "2024-05-01T12:00:00Z", lastTransitionTime: "2024-05-01T11:00:00Z"}
  - {type: MemoryPressure, status: "False", reason: KubeletHasSufficientMemory,
     lastHeartbeatTime: "2024-05-01T12:00:00Z", lastTransitionTime: "2024-05-01T11:00:00Z"}
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
  - {type: Hostname, address: node-1}
  daemonEndpoints:
    kubeletEndpoint: {Port: 10250}
  nodeInfo:
    machineID: 0b6e3c7f
    systemUUID: 4c4c4544-0033
    bootID: 9e1d2c3b
    kernelVersion: 6.1.0-18-amd64
    osImage: Debian GNU/Linux 12 (bookworm)
    containerRuntimeVersion: kubelite://0.1.0
    kubeletVersion: v0.1.0
    kubeProxyVersion: v0.1.0
    operatingSystem: linux
    architecture: amd64
  images:
  - names: [registry.local/library/httpd:latest]
    sizeBytes: 1234567
"""

EVENT_YAML = """
apiVersion: v1
kind: Event
metadata: {name: web-7d9c5b6f4-x2kq8.17c3e1f2a9b8c7d6, namespace: shop}
involvedObject:
  apiVersion: v1
  kind: Pod
  name: web-7d9c5b6f4-x2kq8
  namespace: shop
  uid: 6f1c2b9e-3d4a-4b5c-8d7e-1f2a3b4c5d6e
  resourceVersion: "1234"
  fieldPath: spec.containers{httpd}
reason: Pulled
message: Successfully pulled image "httpd:2.4" in 1.2s
source: {component: kubelet, host: node-1}
firstTimestamp: "2024-05-01T12:00:01Z"
lastTimestamp: "2024-05-01T12:00:05Z"
count: 3
type: Normal
"""

NODE_EVENT_YAML = """
apiVersion: v1
kind: Event
metadata: {name: node-1.17c3e1f2a9b8c7d6, namespace: default}
involvedObject: {kind: Node, name: node-1, uid: node-1}
reason: NodeNotReady
message: Node node-1 status is now NodeNotReady
type: Warning
eventTime: "2024-05-01T12:00:01.123456Z"
series: {count: 2, lastObservedTime: "2024-05-01T12:01:01.000000Z"}
action: MarkNotReady
reportingComponent: node-controller
reportingInstance: controller-manager-1
related: {kind: Lease, namespace: kube-node-lease, name: node-1}
"""

LEASE_YAML = """
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: node-1, namespace: kube-node-lease}
spec:
  holderIdentity: node-1
  leaseDurationSeconds: 40
  acquireTime: "2024-05-01T12:00:00.000000Z"
  renewTime: "2024-05-01T12:05:00.123456Z"
  leaseTransitions: 2
"""

NAMESPACE_YAML = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: storefront}
spec:
  finalizers: [kubernetes]
status:
  phase: Active
"""

SECRET_YAML = """
apiVersion: v1
kind: Secret
metadata: {name: web-tls, namespace: shop}
type: kubernetes.io/tls
data:
  tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t
  tls.key: LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t
immutable: true
"""
SERVICEACCOUNT_YAML = """
apiVersion: v1
kind: ServiceAccount
metadata:
  name: ci-runner
  namespace: shop
automountServiceAccountToken: false
"""

ROLE_YAML = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: shop
rules:
- apiGroups: [""]
  resources: ["pods", "pods/log"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["storefront-settings"]
  verbs: ["get"]
"""

CLUSTERROLE_YAML = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: deployment-manager
rules:
- apiGroups: ["apps"]
  resources: ["deployments", "deployments/status", "replicasets"]
  verbs: ["*"]
"""

ROLEBINDING_YAML = """
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: read-pods
  namespace: shop
subjects:
- kind: User
  name: jane
  apiGroup: rbac.authorization.k8s.io
- kind: ServiceAccount
  name: ci-runner
  namespace: shop
roleRef:
  kind: Role
  name: pod-reader
  apiGroup: rbac.authorization.k8s.io
"""

CLUSTERROLEBINDING_YAML = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: deployers
subjects:
- kind: Group
  name: release-engineers
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: ClusterRole
  name: deployment-manager
  apiGroup: rbac.authorization.k8s.io
"""


def _csr_yaml() -> str:
    from machinery import pki

    request = pki.new_csr(pki.new_key(), pki.Subject("system:node:worker-1", ("system:nodes",)))
    return f"""
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: node-csr-worker-1
spec:
  request: {base64.b64encode(request).decode()}
  signerName: kubernetes.io/kube-apiserver-client-kubelet
  expirationSeconds: 86400
  usages: ["digital signature", "client auth"]
"""


MANIFESTS: dict[str, str] = {
    "deployment-with-probes-resources-env-volumes": DEPLOYMENT_YAML,
    "deployment-from-kubectl-dry-run": GENERATED_DEPLOYMENT_YAML,
    "pod-sidecar-projected-volume-dns-none": SLEEPER_POD_YAML,
    "pod-running-with-full-status": RUNNING_POD_YAML,
    "replicaset-owned-by-deployment": REPLICASET_YAML,
    "service-clusterip-named-ports-client-ip-affinity": SERVICE_YAML,
    "service-nodeport-local-traffic": NODEPORT_SERVICE_YAML,
    "service-headless-without-ports": HEADLESS_SERVICE_YAML,
    "service-external-name": EXTERNAL_SERVICE_YAML,
    "endpoints-ready-and-not-ready": ENDPOINTS_YAML,
    "configmap-data-and-binary": CONFIGMAP_YAML,
    "secret-tls-immutable": SECRET_YAML,
    "node-registered-by-kubelet": NODE_YAML,
    "event-kubelet-pulled": EVENT_YAML,
    "event-new-style-about-node": NODE_EVENT_YAML,
    "lease-node-heartbeat": LEASE_YAML,
    "namespace-with-finalizer": NAMESPACE_YAML,
    "serviceaccount-without-automount": SERVICEACCOUNT_YAML,
    "role-with-resource-names": ROLE_YAML,
    "clusterrole-with-subresources": CLUSTERROLE_YAML,
    "rolebinding-user-and-serviceaccount": ROLEBINDING_YAML,
    "clusterrolebinding-group": CLUSTERROLEBINDING_YAML,
    "csr-node-client": _csr_yaml(),
}


DIGEST = "sha256:" + "4f5a7e6c0d7b5c1e" * 4


def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load(MANIFESTS[name].replace("sha256:<digest>", DIGEST))


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    defaults.apply_defaults(obj)
    return obj


@pytest.mark.parametrize("path", sorted(validation.SCHEMA_DIR.glob("*.json")), ids=lambda p: p.name)
def test_schema_file_is_a_valid_json_schema(path: Any) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_every_kind_has_a_schema_file() -> None:
    names = {p.stem for p in validation.SCHEMA_DIR.glob("*.json")}
    assert names == {k.resource for k in kinds.KINDS} | {"common"}


def test_every_kind_has_a_manifest() -> None:
    covered = {manifest(name)["kind"] for name in MANIFESTS}
    assert covered == {k.kind for k in kinds.KINDS}


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid(name: str) -> None:
    obj = defaulted(manifest(name))
    before = copy.deepcopy(obj)
    assert [str(c) for c in validation.validate(obj)] == []
    assert obj == before, "validate must not change the object"


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_passes_the_schema_alone(name: str) -> None:
    """Even without defaults, as written: defaults only add fields."""
    obj = manifest(name)
    defaults._drop_nulls(obj)
    kind = kinds.by_kind(obj["kind"])
    assert kind is not None
    assert validation._schema_causes(kind, obj) == []


# -- minimal valid objects, the starting point of every rule case ----------------------------


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]},
    }


def _template() -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "httpd:2.4"}]},
    }


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": _template()},
    }


def replicaset() -> dict[str, Any]:
    obj = deployment()
    obj["kind"] = "ReplicaSet"
    return obj


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def endpoints() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.244.1.2"}], "ports": [{"port": 8080}]}],
    }


def configmap() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg"},
        "data": {"app.conf": "x=1"},
    }


def node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {},
        "status": {"capacity": {"cpu": "2", "memory": "4Gi", "pods": "20"}},
    }


def event() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web.17c3e1f2", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Scheduled",
        "message": "assigned default/web to node-1",
        "type": "Normal",
    }


def lease() -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40},
    }


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}


BUILDERS = {
    "Pod": pod,
    "Deployment": deployment,
    "ReplicaSet": replicaset,
    "Service": service,
    "Endpoints": endpoints,
    "ConfigMap": configmap,
    "Node": node,
    "Event": event,
    "Lease": lease,
    "Namespace": namespace,
}

DELETE = object()
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    return [int(i) if i else name for name, i in _STEP.findall(path)]


def change(obj: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with DELETE remove) the field at a Kubernetes-style path."""
    *parents, last = _steps(path)
    node: Any = obj
    for step in parents:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list) and last == len(node):
        node.append(value)
    else:
        node[last] = value


@pytest.mark.parametrize("kind", BUILDERS)
def test_builder_is_valid(kind: str) -> None:
    assert validation.validate(defaulted(BUILDERS[kind]())) == []


# -- one rule, one case ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str
    changes: dict[str, Any]
    field: str
    reason: str
    message: str  # the start of the cause's message


R, IV, NS, DUP = (
    validation.REQUIRED,
    validation.INVALID,
    validation.NOT_SUPPORTED,
    validation.DUPLICATE,
)
F, T, U, NF = (
    validation.FORBIDDEN,
    validation.TYPE_INVALID,
    validation.UNKNOWN,
    validation.NOT_FOUND,
)
TL = validation.TOO_LONG
C0 = "spec.containers[0]"
TC0 = "spec.template.spec.containers[0]"
V0 = "spec.volumes[0]"
TS = "spec.template.spec"

CASES = [
    # type meta
    Case(
        "kind-unknown",
        "Pod",
        {"kind": "Widget"},
        "kind",
        NS,
        'Unsupported value: "Widget": supported values: "CertificateSigningRequest", '
        '"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment"',
    ),
    Case("kind-missing", "Pod", {"kind": DELETE}, "kind", R, "Required value"),
    Case(
        "apiversion-wrong-group",
        "Deployment",
        {"apiVersion": "extensions/v1beta1"},
        "apiVersion",
        NS,
        'Unsupported value: "extensions/v1beta1": supported values: "apps/v1"',
    ),
    Case("apiversion-missing", "Pod", {"apiVersion": DELETE}, "apiVersion", R, "Required value"),
    Case("top-level-unknown-field", "Pod", {"specs": {}}, "specs", U, "unknown field"),
    # metadata
    Case(
        "name-not-a-subdomain",
        "Pod",
        {"metadata.name": "Web_App"},
        "metadata.name",
        IV,
        'Invalid value: "Web_App": must be a lowercase RFC 1123 subdomain',
    ),
    Case(
        "name-longer-than-253",
        "ConfigMap",
        {"metadata.name": "a" * 254},
        "metadata.name",
        IV,
        'Invalid value: "' + "a" * 190,
    ),
    Case(
        "name-missing",
        "Pod",
        {"metadata.name": DELETE},
        "metadata.name",
        R,
        "Required value: name or generateName is required",
    ),
    Case(
        "name-empty",
        "Pod",
        {"metadata.name": ""},
        "metadata.name",
        R,
        "Required value: name or generateName is required",
    ),
    Case(
        "namespace-name-is-a-label",
        "Namespace",
        {"metadata.name": "shop.eu"},
        "metadata.name",
        IV,
        'Invalid value: "shop.eu": must be a lowercase RFC 1123 label',
    ),
    Case(
        "service-name-is-rfc1035",
        "Service",
        {"metadata.name": "1web"},
        "metadata.name",
        IV,
        'Invalid value: "1web": must be a lowercase RFC 1035 label',
    ),
    Case(
        "generate-name-invalid",
        "Pod",
        {"metadata.generateName": "Web-"},
        "metadata.generateName",
        IV,
        'Invalid value: "Web-": must be a lowercase RFC 1123 subdomain',
    ),
    Case(
        "namespace-not-a-label",
        "Pod",
        {"metadata.namespace": "Prod"},
        "metadata.namespace",
        IV,
        'Invalid value: "Prod": must be a lowercase RFC 1123 label',
    ),
    Case(
        "namespace-on-cluster-scoped",
        "Node",
        {"metadata.namespace": "default"},
        "metadata.namespace",
        F,
        "Forbidden: not allowed on Node, which is cluster-scoped",
    ),
    Case(
        "label-key-prefix-uppercase",
        "Pod",
        {"metadata.labels": {"Example.com/app": "x"}},
        "metadata.labels",
        IV,
        'Invalid value: "Example.com/app": prefix part must be a lowercase RFC 1123 subdomain',
    ),
    Case(
        "label-key-two-slashes",
        "Pod",
        {"metadata.labels": {"a/b/c": "x"}},
        "metadata.labels",
        IV,
        "Invalid value: \"a/b/c\": a qualified name may contain at most one '/'",
    ),
    Case(
        "label-key-name-too-long",
        "Pod",
        {"metadata.labels": {"k" * 64: "x"}},
        "metadata.labels",
        IV,
        'Invalid value: "' + "k" * 64 + '": name part must be no more than 63 characters',
    ),
    Case(
        "label-key-empty-name",
        "Pod",
        {"metadata.labels": {"example.com/": "x"}},
        "metadata.labels",
        IV,
        'Invalid value: "example.com/": name part must not be empty',
    ),
    Case(
        "label-value-leading-dash",
        "Pod",
        {"metadata.labels": {"app": "-web"}},
        "metadata.labels",
        IV,
        'Invalid value: "-web": a label value must be empty or consist of',
    ),
    Case(
        "label-value-too-long",
        "Pod",
        {"metadata.labels": {"app": "v" * 64}},
        "metadata.labels",
        IV,
        'Invalid value: "' + "v" * 64 + '": must be no more than 63 characters',
    ),
    Case(
        "label-value-not-a-string",
        "Pod",
        {"metadata.labels": {"replicas": 3}},
        "metadata.labels[replicas]",
        T,
        "Invalid value: 3: must be a string",
    ),
    Case(
        "annotations-over-256k",
        "Pod",
        {"metadata.annotations": {"a": "x" * 262144}},
        "metadata.annotations",
        TL,
        "Too long: may not be more than 262144 bytes in total",
    ),
    Case(
        "annotation-key-invalid",
        "Pod",
        {"metadata.annotations": {"bad key": "x"}},
        "metadata.annotations",
        IV,
        'Invalid value: "bad key": name part must consist of',
    ),
    Case(
        "owner-reference-missing-uid",
        "Pod",
        {
            "metadata.ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web"}
            ]
        },
        "metadata.ownerReferences[0].uid",
        R,
        "Required value",
    ),
    Case(
        "owner-reference-empty-name",
        "Pod",
        {
            "metadata.ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "", "uid": "u1"}
            ]
        },
        "metadata.ownerReferences[0].name",
        R,
        "Required value",
    ),
    Case(
        "owner-references-two-controllers",
        "Pod",
        {
            "metadata.ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": n,
                    "uid": n,
                    "controller": True,
                }
                for n in ("a", "b")
            ]
        },
        "metadata.ownerReferences",
        IV,
        'Invalid value: ["ReplicaSet/a","ReplicaSet/b"]: at most one reference may have '
        "controller set to true",
    ),
    Case(
        "finalizer-not-qualified",
        "Pod",
        {"metadata.finalizers": ["cleanup"]},
        "metadata.finalizers[0]",
        IV,
        'Invalid value: "cleanup": must be a standard finalizer',
    ),
    Case(
        "finalizers-orphan-and-foreground",
        "Pod",
        {"metadata.finalizers": ["orphan", "foregroundDeletion"]},
        "metadata.finalizers",
        IV,
        'Invalid value: ["orphan","foregroundDeletion"]: orphan and foregroundDeletion may not '
        "both be set",
    ),
    Case(
        "creation-timestamp-not-rfc3339",
        "Pod",
        {"metadata.creationTimestamp": "yesterday"},
        "metadata.creationTimestamp",
        IV,
        'Invalid value: "yesterday": must be an RFC 3339 date-time',
    ),
    Case(
        "generation-negative",
        "Pod",
        {"metadata.generation": -1},
        "metadata.generation",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "metadata-unknown-field",
        "Pod",
        {"metadata.labelz": {}},
        "metadata.labelz",
        U,
        "unknown field",
    ),
    Case(
        "metadata-not-an-object",
        "Pod",
        {"metadata": "web"},
        "metadata",
        T,
        'Invalid value: "web": must be an object',
    ),
    # pod spec: containers
    Case("spec-missing", "Pod", {"spec": DELETE}, "spec", R, "Required value"),
    Case(
        "containers-missing",
        "Pod",
        {"spec.containers": DELETE},
        "spec.containers",
        R,
        "Required value",
    ),
    Case(
        "containers-empty", "Pod", {"spec.containers": []}, "spec.containers", R, "Required value"
    ),
    Case(
        "container-image-missing-in-template",
        "Deployment",
        {f"{TC0}.image": DELETE},
        f"{TC0}.image",
        R,
        "Required value",
    ),
    Case("container-image-empty", "Pod", {f"{C0}.image": ""}, f"{C0}.image", R, "Required value"),
    Case(
        "container-image-whitespace",
        "Pod",
        {f"{C0}.image": " busybox"},
        f"{C0}.image",
        IV,
        'Invalid value: " busybox": must not have leading or trailing whitespace',
    ),
    Case(
        "container-unknown-field-in-template",
        "Deployment",
        {f"{TC0}.imagee": "httpd"},
        f"{TC0}.imagee",
        U,
        "unknown field",
    ),
    Case(
        "container-name-not-a-label",
        "Pod",
        {f"{C0}.name": "App"},
        f"{C0}.name",
        IV,
        'Invalid value: "App": must be a lowercase RFC 1123 label',
    ),
    Case(
        "container-name-missing", "Pod", {f"{C0}.name": DELETE}, f"{C0}.name", R, "Required value"
    ),
    Case(
        "container-name-duplicate-of-init",
        "Pod",
        {"spec.initContainers": [{"name": "app", "image": "busybox"}]},
        f"{C0}.name",
        DUP,
        'Duplicate value: "app"',
    ),
    Case(
        "container-command-not-a-list",
        "Pod",
        {f"{C0}.command": "sleep 1"},
        f"{C0}.command",
        T,
        'Invalid value: "sleep 1": must be a list',
    ),
    Case(
        "container-args-item-not-a-string",
        "Pod",
        {f"{C0}.args": ["sleep", 5]},
        f"{C0}.args[1]",
        T,
        "Invalid value: 5: must be a string",
    ),
    Case(
        "image-pull-policy-unsupported",
        "Pod",
        {f"{C0}.imagePullPolicy": "Sometimes"},
        f"{C0}.imagePullPolicy",
        NS,
        'Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never"',
    ),
    Case(
        "termination-message-policy-unsupported",
        "Pod",
        {f"{C0}.terminationMessagePolicy": "Log"},
        f"{C0}.terminationMessagePolicy",
        NS,
        'Unsupported value: "Log"',
    ),
    Case(
        "restart-policy-on-app-container",
        "Pod",
        {f"{C0}.restartPolicy": "Always"},
        f"{C0}.restartPolicy",
        F,
        "Forbidden: may only be set on init containers",
    ),
    # pod spec: ports
    Case(
        "container-port-zero",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 0}]},
        f"{C0}.ports[0].containerPort",
        IV,
        "Invalid value: 0: must be a port number between 1 and 65535, inclusive",
    ),
    Case(
        "container-port-too-big",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 70000}]},
        f"{C0}.ports[0].containerPort",
        IV,
        "Invalid value: 70000: must be a port number between 1 and 65535",
    ),
    Case(
        "container-port-missing",
        "Pod",
        {f"{C0}.ports": [{"name": "http"}]},
        f"{C0}.ports[0].containerPort",
        R,
        "Required value",
    ),
    Case(
        "container-port-not-an-integer",
        "Pod",
        {f"{C0}.ports": [{"containerPort": "80"}]},
        f"{C0}.ports[0].containerPort",
        T,
        'Invalid value: "80": must be an integer',
    ),
    Case(
        "port-name-longer-than-15",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "name": "http-metrics-port"}]},
        f"{C0}.ports[0].name",
        IV,
        'Invalid value: "http-metrics-port": must be no more than 15 characters',
    ),
    Case(
        "port-name-without-letter",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "name": "8080"}]},
        f"{C0}.ports[0].name",
        IV,
        'Invalid value: "8080": must contain at least one letter',
    ),
    Case(
        "port-name-double-dash",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "name": "a--b"}]},
        f"{C0}.ports[0].name",
        IV,
        'Invalid value: "a--b": must not begin or end with',
    ),
    Case(
        "port-name-uppercase",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "name": "HTTP"}]},
        f"{C0}.ports[0].name",
        IV,
        'Invalid value: "HTTP": must contain only lowercase letters',
    ),
    Case(
        "port-name-duplicate",
        "Pod",
        {
            f"{C0}.ports": [
                {"containerPort": 80, "name": "web"},
                {"containerPort": 81, "name": "web"},
            ]
        },
        f"{C0}.ports[1].name",
        DUP,
        'Duplicate value: "web"',
    ),
    Case(
        "port-protocol-unsupported",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "protocol": "HTTP"}]},
        f"{C0}.ports[0].protocol",
        NS,
        'Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"',
    ),
    Case(
        "host-port-too-big",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "hostPort": 70000}]},
        f"{C0}.ports[0].hostPort",
        IV,
        "Invalid value: 70000: must be a port number between 1 and 65535, inclusive, or 0",
    ),
    Case(
        "host-port-differs-under-host-network",
        "Pod",
        {"spec.hostNetwork": True, f"{C0}.ports": [{"containerPort": 80, "hostPort": 8080}]},
        f"{C0}.ports[0].hostPort",
        IV,
        "Invalid value: 8080: must match `containerPort` when `hostNetwork` is true",
    ),
    Case(
        "host-port-taken-twice",
        "Pod",
        {
            "spec.containers": [
                {"name": n, "image": "x", "ports": [{"containerPort": p, "hostPort": 8080}]}
                for n, p in (("a", 80), ("b", 81))
            ]
        },
        "spec.containers[1].ports[0].hostPort",
        DUP,
        'Duplicate value: "8080/TCP"',
    ),
    Case(
        "host-ip-invalid",
        "Pod",
        {f"{C0}.ports": [{"containerPort": 80, "hostIP": "1.2.3"}]},
        f"{C0}.ports[0].hostIP",
        IV,
        'Invalid value: "1.2.3": must be a valid IP address',
    ),
    # pod spec: resources
    Case(
        "requests-above-limits",
        "Pod",
        {f"{C0}.resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
        f"{C0}.resources.requests[cpu]",
        IV,
        'Invalid value: "2": must be less than or equal to the cpu limit of 1',
    ),
    Case(
        "memory-requests-above-limits-mixed-units",
        "Pod",
        {f"{C0}.resources": {"requests": {"memory": "1G"}, "limits": {"memory": "512Mi"}}},
        f"{C0}.resources.requests[memory]",
        IV,
        'Invalid value: "1G": must be less than or equal to the memory limit of 512Mi',
    ),
    Case(
        "quantity-unparsable",
        "Pod",
        {f"{C0}.resources": {"limits": {"memory": "12x"}}},
        f"{C0}.resources.limits[memory]",
        IV,
        'Invalid value: "12x": must be a quantity such as 500m, 1.5, 128Mi or 1G',
    ),
    Case(
        "quantity-negative",
        "Pod",
        {f"{C0}.resources": {"requests": {"cpu": "-100m"}}},
        f"{C0}.resources.requests[cpu]",
        IV,
        'Invalid value: "-100m": must be greater than or equal to 0',
    ),
    Case(
        "quantity-not-a-scalar",
        "Pod",
        {f"{C0}.resources": {"requests": {"cpu": True}}},
        f"{C0}.resources.requests[cpu]",
        T,
        "Invalid value: true: must be a string or an integer or a number",
    ),
    Case(
        "resource-name-unknown",
        "Pod",
        {f"{C0}.resources": {"limits": {"gpu": "1"}}},
        f"{C0}.resources.limits[gpu]",
        IV,
        'Invalid value: "gpu": must be a standard resource for containers',
    ),
    Case(
        "resources-unknown-section",
        "Pod",
        {f"{C0}.resources": {"request": {"cpu": "1"}}},
        f"{C0}.resources.request",
        U,
        "unknown field",
    ),
    # pod spec: volumes and mounts
    Case(
        "volume-without-source",
        "Pod",
        {"spec.volumes": [{"name": "data"}]},
        V0,
        R,
        "Required value: must specify a volume type",
    ),
    Case(
        "volume-two-sources",
        "Pod",
        {"spec.volumes": [{"name": "data", "emptyDir": {}, "hostPath": {"path": "/srv"}}]},
        f"{V0}.hostPath",
        F,
        "Forbidden: may not specify more than 1 volume type",
    ),
    Case(
        "volume-name-duplicate",
        "Pod",
        {"spec.volumes": [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]},
        "spec.volumes[1].name",
        DUP,
        'Duplicate value: "data"',
    ),
    Case(
        "volume-name-not-a-label",
        "Pod",
        {"spec.volumes": [{"name": "Data", "emptyDir": {}}]},
        f"{V0}.name",
        IV,
        'Invalid value: "Data": must be a lowercase RFC 1123 label',
    ),
    Case(
        "volume-source-unsupported",
        "Pod",
        {"spec.volumes": [{"name": "data", "emptyDir": {}, "nfs": {"server": "x"}}]},
        f"{V0}.nfs",
        U,
        "unknown field",
    ),
    Case(
        "empty-dir-size-limit-invalid",
        "Pod",
        {"spec.volumes": [{"name": "data", "emptyDir": {"sizeLimit": "lots"}}]},
        f"{V0}.emptyDir.sizeLimit",
        IV,
        'Invalid value: "lots": must be a quantity',
    ),
    Case(
        "empty-dir-medium-unsupported",
        "Pod",
        {"spec.volumes": [{"name": "data", "emptyDir": {"medium": "Disk"}}]},
        f"{V0}.emptyDir.medium",
        NS,
        'Unsupported value: "Disk": supported values: "", "Memory"',
    ),
    Case(
        "host-path-missing-path",
        "Pod",
        {"spec.volumes": [{"name": "data", "hostPath": {}}]},
        f"{V0}.hostPath.path",
        R,
        "Required value",
    ),
    Case(
        "host-path-backsteps",
        "Pod",
        {"spec.volumes": [{"name": "data", "hostPath": {"path": "/srv/../etc"}}]},
        f"{V0}.hostPath.path",
        IV,
        "Invalid value: \"/srv/../etc\": must not contain '..'",
    ),
    Case(
        "host-path-type-unsupported",
        "Pod",
        {"spec.volumes": [{"name": "data", "hostPath": {"path": "/srv", "type": "Dir"}}]},
        f"{V0}.hostPath.type",
        NS,
        'Unsupported value: "Dir"',
    ),
    Case(
        "configmap-volume-mode-too-big",
        "Pod",
        {"spec.volumes": [{"name": "c", "configMap": {"name": "c", "defaultMode": 1000}}]},
        f"{V0}.configMap.defaultMode",
        IV,
        "Invalid value: 1000: must be a file mode between 0 and 0777 (octal)",
    ),
    Case(
        "configmap-volume-name-missing",
        "Pod",
        {"spec.volumes": [{"name": "c", "configMap": {}}]},
        f"{V0}.configMap.name",
        R,
        "Required value",
    ),
    Case(
        "configmap-volume-item-absolute-path",
        "Pod",
        {
            "spec.volumes": [
                {"name": "c", "configMap": {"name": "c", "items": [{"key": "a", "path": "/etc/a"}]}}
            ]
        },
        f"{V0}.configMap.items[0].path",
        IV,
        'Invalid value: "/etc/a": must be a relative path',
    ),
    Case(
        "configmap-volume-item-bad-key",
        "Pod",
        {
            "spec.volumes": [
                {"name": "c", "configMap": {"name": "c", "items": [{"key": "a b", "path": "a"}]}}
            ]
        },
        f"{V0}.configMap.items[0].key",
        IV,
        'Invalid value: "a b": must consist of letters, digits',
    ),
    Case(
        "secret-volume-name-missing",
        "Pod",
        {"spec.volumes": [{"name": "s", "secret": {}}]},
        f"{V0}.secret.secretName",
        R,
        "Required value",
    ),
    Case(
        "projected-source-empty",
        "Pod",
        {"spec.volumes": [{"name": "p", "projected": {"sources": [{}]}}]},
        f"{V0}.projected.sources[0]",
        R,
        "Required value: must specify a projection source",
    ),
    Case(
        "volume-mount-unknown-volume",
        "Pod",
        {f"{C0}.volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        f"{C0}.volumeMounts[0].name",
        NF,
        'Not found: "data"',
    ),
    Case(
        "volume-mount-relative-path",
        "Pod",
        {
            "spec.volumes": [{"name": "d", "emptyDir": {}}],
            f"{C0}.volumeMounts": [{"name": "d", "mountPath": "data"}],
        },
        f"{C0}.volumeMounts[0].mountPath",
        IV,
        'Invalid value: "data": must be an absolute path',
    ),
    Case(
        "volume-mount-path-twice",
        "Pod",
        {
            "spec.volumes": [{"name": "d", "emptyDir": {}}],
            f"{C0}.volumeMounts": [
                {"name": "d", "mountPath": "/d"},
                {"name": "d", "mountPath": "/d"},
            ],
        },
        f"{C0}.volumeMounts[1].mountPath",
        IV,
        'Invalid value: "/d": must be unique',
    ),
    Case(
        "volume-mount-sub-path-escapes",
        "Pod",
        {
            "spec.volumes": [{"name": "d", "emptyDir": {}}],
            f"{C0}.volumeMounts": [{"name": "d", "mountPath": "/d", "subPath": "../x"}],
        },
        f"{C0}.volumeMounts[0].subPath",
        IV,
        "Invalid value: \"../x\": must not contain '..'",
    ),
    Case(
        "volume-mount-path-missing",
        "Pod",
        {"spec.volumes": [{"name": "d", "emptyDir": {}}], f"{C0}.volumeMounts": [{"name": "d"}]},
        f"{C0}.volumeMounts[0].mountPath",
        R,
        "Required value",
    ),
    # pod spec: env
    Case(
        "env-name-missing",
        "Pod",
        {f"{C0}.env": [{"value": "x"}]},
        f"{C0}.env[0].name",
        R,
        "Required value",
    ),
    Case(
        "env-name-with-equals",
        "Pod",
        {f"{C0}.env": [{"name": "A=B", "value": "x"}]},
        f"{C0}.env[0].name",
        IV,
        "Invalid value: \"A=B\": must consist only of printable ASCII characters other than '='",
    ),
    Case(
        "env-value-and-value-from",
        "Pod",
        {
            f"{C0}.env": [
                {
                    "name": "A",
                    "value": "x",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                }
            ]
        },
        f"{C0}.env[0].valueFrom",
        IV,
        'Invalid value: "": may not be specified when `value` is not empty',
    ),
    Case(
        "env-value-from-empty",
        "Pod",
        {f"{C0}.env": [{"name": "A", "valueFrom": {}}]},
        f"{C0}.env[0].valueFrom",
        IV,
        "Invalid value: {}: must specify one of: `fieldRef`",
    ),
    Case(
        "env-value-from-two-sources",
        "Pod",
        {
            f"{C0}.env": [
                {
                    "name": "A",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": "metadata.name"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ]
        },
        f"{C0}.env[0].valueFrom",
        IV,
        'Invalid value: ["fieldRef","configMapKeyRef"]: may not have more than one field '
        "specified at a time",
    ),
    Case(
        "env-field-ref-unsupported-path",
        "Pod",
        {f"{C0}.env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]},
        f"{C0}.env[0].valueFrom.fieldRef.fieldPath",
        NS,
        'Unsupported value: "spec.containers"',
    ),
    Case(
        "env-resource-field-ref-unsupported",
        "Pod",
        {
            f"{C0}.env": [
                {"name": "A", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}
            ]
        },
        f"{C0}.env[0].valueFrom.resourceFieldRef.resource",
        NS,
        'Unsupported value: "limits.gpu"',
    ),
    Case(
        "env-config-map-key-missing",
        "Pod",
        {f"{C0}.env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c"}}}]},
        f"{C0}.env[0].valueFrom.configMapKeyRef.key",
        R,
        "Required value",
    ),
    Case(
        "env-config-map-name-missing",
        "Pod",
        {f"{C0}.env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"key": "k"}}}]},
        f"{C0}.env[0].valueFrom.configMapKeyRef.name",
        R,
        "Required value",
    ),
    Case(
        "env-from-without-source",
        "Pod",
        {f"{C0}.envFrom": [{"prefix": "X_"}]},
        f"{C0}.envFrom[0]",
        IV,
        "Invalid value: []: must specify exactly one of `configMapRef` and `secretRef`",
    ),
    Case(
        "env-from-config-map-name-invalid",
        "Pod",
        {f"{C0}.envFrom": [{"configMapRef": {"name": "Web_Config"}}]},
        f"{C0}.envFrom[0].configMapRef.name",
        IV,
        'Invalid value: "Web_Config": must be a lowercase RFC 1123 subdomain',
    ),
    # pod spec: probes and lifecycle
    Case(
        "probe-without-handler",
        "Pod",
        {f"{C0}.livenessProbe": {"periodSeconds": 5}},
        f"{C0}.livenessProbe",
        R,
        "Required value: must specify a handler type",
    ),
    Case(
        "probe-two-handlers",
        "Pod",
        {f"{C0}.readinessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}},
        f"{C0}.readinessProbe.tcpSocket",
        F,
        "Forbidden: may not specify more than 1 handler type",
    ),
    Case(
        "probe-http-port-bad-name",
        "Pod",
        {f"{C0}.readinessProbe": {"httpGet": {"port": "Web_Port"}}},
        f"{C0}.readinessProbe.httpGet.port",
        IV,
        'Invalid value: "Web_Port": must contain only lowercase letters',
    ),
    Case(
        "probe-tcp-port-zero",
        "Pod",
        {f"{C0}.livenessProbe": {"tcpSocket": {"port": 0}}},
        f"{C0}.livenessProbe.tcpSocket.port",
        IV,
        "Invalid value: 0: must be a port number between 1 and 65535",
    ),
    Case(
        "probe-http-port-missing",
        "Pod",
        {f"{C0}.livenessProbe": {"httpGet": {"path": "/"}}},
        f"{C0}.livenessProbe.httpGet.port",
        R,
        "Required value",
    ),
    Case(
        "probe-http-scheme-unsupported",
        "Pod",
        {f"{C0}.livenessProbe": {"httpGet": {"port": 80, "scheme": "FTP"}}},
        f"{C0}.livenessProbe.httpGet.scheme",
        NS,
        'Unsupported value: "FTP": supported values: "HTTP", "HTTPS"',
    ),
    Case(
        "probe-period-zero",
        "Pod",
        {f"{C0}.readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0}},
        f"{C0}.readinessProbe.periodSeconds",
        IV,
        "Invalid value: 0: must be greater than or equal to 1",
    ),
    Case(
        "probe-exec-without-command",
        "Pod",
        {f"{C0}.readinessProbe": {"exec": {}}},
        f"{C0}.readinessProbe.exec.command",
        R,
        "Required value",
    ),
    Case(
        "liveness-success-threshold-not-1",
        "Pod",
        {f"{C0}.livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}},
        f"{C0}.livenessProbe.successThreshold",
        IV,
        "Invalid value: 2: must be 1",
    ),
    Case(
        "probe-on-plain-init-container",
        "Pod",
        {
            "spec.initContainers": [
                {"name": "init", "image": "x", "readinessProbe": {"exec": {"command": ["true"]}}}
            ]
        },
        "spec.initContainers[0].readinessProbe",
        F,
        "Forbidden: may not be set for init containers without restartPolicy=Always",
    ),
    Case(
        "lifecycle-hook-without-handler",
        "Pod",
        {f"{C0}.lifecycle": {"preStop": {}}},
        f"{C0}.lifecycle.preStop",
        R,
        "Required value: must specify a handler type",
    ),
    # pod spec: security
    Case(
        "privileged-without-escalation",
        "Pod",
        {f"{C0}.securityContext": {"privileged": True, "allowPrivilegeEscalation": False}},
        f"{C0}.securityContext.allowPrivilegeEscalation",
        IV,
        "Invalid value: false: cannot be false when `privileged` is true",
    ),
    Case(
        "proc-mount-unsupported",
        "Pod",
        {f"{C0}.securityContext": {"procMount": "Masked"}},
        f"{C0}.securityContext.procMount",
        NS,
        'Unsupported value: "Masked": supported values: "Default", "Unmasked"',
    ),
    Case(
        "seccomp-localhost-without-profile",
        "Pod",
        {"spec.securityContext": {"seccompProfile": {"type": "Localhost"}}},
        "spec.securityContext.seccompProfile.localhostProfile",
        R,
        "Required value: must be set when seccomp type is Localhost",
    ),
    Case(
        "run-as-user-negative",
        "Pod",
        {f"{C0}.securityContext": {"runAsUser": -1}},
        f"{C0}.securityContext.runAsUser",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "capabilities-add-not-a-list",
        "Pod",
        {f"{C0}.securityContext": {"capabilities": {"add": "NET_ADMIN"}}},
        f"{C0}.securityContext.capabilities.add",
        T,
        'Invalid value: "NET_ADMIN": must be a list',
    ),
    Case(
        "sysctl-name-invalid",
        "Pod",
        {"spec.securityContext": {"sysctls": [{"name": "net/../core", "value": "1"}]}},
        "spec.securityContext.sysctls[0].name",
        IV,
        'Invalid value: "net/../core": must be a sysctl name',
    ),
    Case(
        "share-process-namespace-with-host-pid",
        "Pod",
        {"spec.shareProcessNamespace": True, "spec.hostPID": True},
        "spec.shareProcessNamespace",
        IV,
        "Invalid value: true: cannot be true together with `hostPID`",
    ),
    # pod spec: pod-level fields
    Case(
        "restart-policy-unsupported",
        "Pod",
        {"spec.restartPolicy": "Sometimes"},
        "spec.restartPolicy",
        NS,
        'Unsupported value: "Sometimes": supported values: "Always", "Never", "OnFailure"',
    ),
    Case(
        "dns-policy-unsupported",
        "Pod",
        {"spec.dnsPolicy": "Cluster"},
        "spec.dnsPolicy",
        NS,
        'Unsupported value: "Cluster": supported values: "ClusterFirst", '
        '"ClusterFirstWithHostNet", "Default", "None"',
    ),
    Case(
        "dns-policy-none-without-config",
        "Pod",
        {"spec.dnsPolicy": "None"},
        "spec.dnsConfig",
        R,
        "Required value: must provide `dnsConfig` when `dnsPolicy` is None",
    ),
    Case(
        "dns-nameserver-not-an-ip",
        "Pod",
        {"spec.dnsConfig": {"nameservers": ["dns.local"]}},
        "spec.dnsConfig.nameservers[0]",
        IV,
        'Invalid value: "dns.local": must be a valid IP address',
    ),
    Case(
        "dns-more-than-3-nameservers",
        "Pod",
        {"spec.dnsConfig": {"nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]}},
        "spec.dnsConfig.nameservers",
        IV,
        'Invalid value: ["10.0.0.1","10.0.0.2","10.0.0.3","10.0.0.4"]: must not have more than 3 '
        "nameservers",
    ),
    Case(
        "grace-period-negative",
        "Pod",
        {"spec.terminationGracePeriodSeconds": -1},
        "spec.terminationGracePeriodSeconds",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "active-deadline-zero",
        "Pod",
        {"spec.activeDeadlineSeconds": 0},
        "spec.activeDeadlineSeconds",
        IV,
        "Invalid value: 0: must be greater than or equal to 1",
    ),
    Case(
        "hostname-not-a-label",
        "Pod",
        {"spec.hostname": "web.local"},
        "spec.hostname",
        IV,
        'Invalid value: "web.local": must be a lowercase RFC 1123 label',
    ),
    Case(
        "node-name-invalid",
        "Pod",
        {"spec.nodeName": "Node_1"},
        "spec.nodeName",
        IV,
        'Invalid value: "Node_1": must be a lowercase RFC 1123 subdomain',
    ),
    Case(
        "service-account-name-invalid",
        "Pod",
        {"spec.serviceAccountName": "Web"},
        "spec.serviceAccountName",
        IV,
        'Invalid value: "Web": must be a lowercase RFC 1123 subdomain',
    ),
    Case(
        "node-selector-bad-key",
        "Pod",
        {"spec.nodeSelector": {"disk type": "ssd"}},
        "spec.nodeSelector",
        IV,
        'Invalid value: "disk type": name part must consist of',
    ),
    Case(
        "host-network-not-a-boolean",
        "Pod",
        {"spec.hostNetwork": "yes"},
        "spec.hostNetwork",
        T,
        'Invalid value: "yes": must be a boolean',
    ),
    Case(
        "host-alias-ip-invalid",
        "Pod",
        {"spec.hostAliases": [{"ip": "db", "hostnames": ["db.local"]}]},
        "spec.hostAliases[0].ip",
        IV,
        'Invalid value: "db": must be a valid IP address',
    ),
    Case(
        "readiness-gate-bad-condition",
        "Pod",
        {"spec.readinessGates": [{"conditionType": "bad type"}]},
        "spec.readinessGates[0].conditionType",
        IV,
        'Invalid value: "bad type": name part must consist of',
    ),
    # pod spec: scheduling
    Case(
        "toleration-exists-with-value",
        "Pod",
        {"spec.tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
        "spec.tolerations[0].operator",
        IV,
        "Invalid value: \"Exists\": value must be empty when `operator` is 'Exists'",
    ),
    Case(
        "toleration-empty-key-with-equal",
        "Pod",
        {"spec.tolerations": [{"operator": "Equal", "value": "v"}]},
        "spec.tolerations[0].operator",
        IV,
        "Invalid value: \"Equal\": must be 'Exists' when `key` is empty",
    ),
    Case(
        "toleration-seconds-without-no-execute",
        "Pod",
        {
            "spec.tolerations": [
                {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 10}
            ]
        },
        "spec.tolerations[0].effect",
        IV,
        "Invalid value: \"NoSchedule\": must be 'NoExecute' when `tolerationSeconds` is set",
    ),
    Case(
        "toleration-operator-unsupported",
        "Pod",
        {"spec.tolerations": [{"key": "k", "operator": "Equals"}]},
        "spec.tolerations[0].operator",
        NS,
        'Unsupported value: "Equals": supported values: "Equal", "Exists"',
    ),
    Case(
        "toleration-effect-unsupported",
        "Pod",
        {"spec.tolerations": [{"key": "k", "operator": "Exists", "effect": "NoWay"}]},
        "spec.tolerations[0].effect",
        NS,
        'Unsupported value: "NoWay": supported values: "", "NoExecute", "NoSchedule", '
        '"PreferNoSchedule"',
    ),
    Case(
        "node-affinity-in-without-values",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "In"}]}
                        ]
                    }
                }
            }
        },
        ""
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
        R,
        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
    ),
    Case(
        "node-affinity-exists-with-values",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "Exists", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            }
        },
        ""
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
        F,
        "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
    ),
    Case(
        "node-affinity-gt-not-integer",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "cores", "operator": "Gt", "values": ["many"]}
                                ]
                            }
                        ]
                    }
                }
            }
        },
        ""
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values",
        IV,
        "Invalid value: [\"many\"]: must be one integer value for 'Gt' or 'Lt'",
    ),
    Case(
        "node-affinity-operator-unsupported",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "zone", "operator": "Is"}]}
                        ]
                    }
                }
            }
        },
        ""
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator",
        NS,
        'Unsupported value: "Is": supported values: "DoesNotExist", "Exists", "Gt", "In", "Lt", '
        '"NotIn"',
    ),
    Case(
        "node-affinity-match-fields-key",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchFields": [
                                    {"key": "metadata.labels", "operator": "In", "values": ["a"]}
                                ]
                            }
                        ]
                    }
                }
            }
        },
        ""
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key",
        NS,
        'Unsupported value: "metadata.labels": supported values: "metadata.name"',
    ),
    Case(
        "node-affinity-no-terms",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}
                }
            }
        },
        ""
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        R,
        "Required value",
    ),
    Case(
        "node-affinity-weight-zero",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 0, "preference": {}}
                    ]
                }
            }
        },
        "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
        IV,
        "Invalid value: 0: must be in the range 1-100",
    ),
    Case(
        "pod-anti-affinity-topology-key-empty",
        "Pod",
        {
            "spec.affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "", "labelSelector": {"matchLabels": {"app": "web"}}}
                    ]
                }
            }
        },
        ""
        "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
        R,
        "Required value",
    ),
    Case(
        "topology-spread-max-skew-zero",
        "Pod",
        {
            "spec.topologySpreadConstraints": [
                {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
            ]
        },
        "spec.topologySpreadConstraints[0].maxSkew",
        IV,
        "Invalid value: 0: must be greater than or equal to 1",
    ),
    # pod status
    Case(
        "pod-phase-unsupported",
        "Pod",
        {"status": {"phase": "Done"}},
        "status.phase",
        NS,
        'Unsupported value: "Done": supported values: "Failed", "Pending", "Running", '
        '"Succeeded", "Unknown"',
    ),
    Case(
        "pod-ip-invalid",
        "Pod",
        {"status": {"podIP": "10.244.1"}},
        "status.podIP",
        IV,
        'Invalid value: "10.244.1": must be a valid IP address',
    ),
    Case(
        "pod-ips-item-invalid",
        "Pod",
        {"status": {"podIPs": [{"ip": "::g"}]}},
        "status.podIPs[0].ip",
        IV,
        'Invalid value: "::g": must be a valid IP address',
    ),
    Case(
        "pod-condition-status-unsupported",
        "Pod",
        {"status": {"conditions": [{"type": "Ready", "status": "Yes"}]}},
        "status.conditions[0].status",
        NS,
        'Unsupported value: "Yes": supported values: "False", "True", "Unknown"',
    ),
    Case(
        "container-status-restart-count-negative",
        "Pod",
        {"status": {"containerStatuses": [{"name": "app", "restartCount": -1}]}},
        "status.containerStatuses[0].restartCount",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "container-terminated-without-exit-code",
        "Pod",
        {
            "status": {
                "containerStatuses": [{"name": "app", "state": {"terminated": {"reason": "Error"}}}]
            }
        },
        "status.containerStatuses[0].state.terminated.exitCode",
        R,
        "Required value",
    ),
    Case(
        "container-state-unknown",
        "Pod",
        {"status": {"containerStatuses": [{"name": "app", "state": {"sleeping": {}}}]}},
        "status.containerStatuses[0].state.sleeping",
        U,
        "unknown field",
    ),
    # workloads
    Case(
        "replicas-negative",
        "Deployment",
        {"spec.replicas": -1},
        "spec.replicas",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "replicas-a-string",
        "Deployment",
        {"spec.replicas": "3"},
        "spec.replicas",
        T,
        'Invalid value: "3": must be an integer',
    ),
    Case(
        "selector-missing",
        "Deployment",
        {"spec.selector": DELETE},
        "spec.selector",
        R,
        "Required value",
    ),
    Case(
        "selector-empty",
        "Deployment",
        {"spec.selector": {}},
        "spec.selector",
        IV,
        "Invalid value: {}: must not be empty: an empty Deployment selector would match every Pod",
    ),
    Case(
        "selector-does-not-match-template",
        "Deployment",
        {"spec.selector": {"matchLabels": {"app": "api"}}},
        "spec.template.metadata.labels",
        IV,
        'Invalid value: {"app":"web"}: must match `spec.selector` (app=api)',
    ),
    Case(
        "selector-expression-does-not-match",
        "Deployment",
        {
            "spec.selector": {
                "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]
            }
        },
        "spec.template.metadata.labels",
        IV,
        'Invalid value: {"app":"web"}: must match `spec.selector` (app notin (web))',
    ),
    Case(
        "selector-in-without-values",
        "Deployment",
        {
            "spec.selector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": []}],
            }
        },
        "spec.selector.matchExpressions[0].values",
        R,
        "Required value: must be specified when `operator` is 'In' or 'NotIn'",
    ),
    Case(
        "selector-operator-unsupported",
        "Deployment",
        {
            "spec.selector": {
                "matchExpressions": [{"key": "app", "operator": "Includes", "values": ["web"]}]
            }
        },
        "spec.selector.matchExpressions[0].operator",
        NS,
        'Unsupported value: "Includes": supported values: "DoesNotExist", "Exists", "In", "NotIn"',
    ),
    Case(
        "selector-bad-label-value",
        "Deployment",
        {"spec.selector": {"matchLabels": {"app": "web app"}}},
        "spec.selector.matchLabels",
        IV,
        'Invalid value: "web app": a label value must be empty',
    ),
    Case(
        "template-missing",
        "Deployment",
        {"spec.template": DELETE},
        "spec.template",
        R,
        "Required value",
    ),
    Case(
        "template-spec-missing",
        "Deployment",
        {"spec.template.spec": DELETE},
        "spec.template.spec",
        R,
        "Required value",
    ),
    Case(
        "template-restart-policy-never",
        "Deployment",
        {f"{TS}.restartPolicy": "Never"},
        f"{TS}.restartPolicy",
        NS,
        'Unsupported value: "Never": supported values: "Always"',
    ),
    Case(
        "template-active-deadline",
        "ReplicaSet",
        {f"{TS}.activeDeadlineSeconds": 60},
        f"{TS}.activeDeadlineSeconds",
        F,
        "Forbidden: may not be set in a pod template of a controller",
    ),
    Case(
        "template-label-bad-key",
        "ReplicaSet",
        {"spec.template.metadata.labels": {"app": "web", "-x": "1"}},
        "spec.template.metadata.labels",
        IV,
        'Invalid value: "-x": name part must consist of',
    ),
    Case(
        "replicaset-selector-mismatch",
        "ReplicaSet",
        {"spec.template.metadata.labels": {"app": "db"}},
        "spec.template.metadata.labels",
        IV,
        'Invalid value: {"app":"db"}: must match `spec.selector` (app=web)',
    ),
    Case(
        "replicaset-min-ready-negative",
        "ReplicaSet",
        {"spec.minReadySeconds": -5},
        "spec.minReadySeconds",
        IV,
        "Invalid value: -5: must be greater than or equal to 0",
    ),
    Case(
        "replicaset-strategy-unknown",
        "ReplicaSet",
        {"spec.strategy": {}},
        "spec.strategy",
        U,
        "unknown field",
    ),
    Case(
        "strategy-type-unsupported",
        "Deployment",
        {"spec.strategy.type": "BlueGreen"},
        "spec.strategy.type",
        NS,
        'Unsupported value: "BlueGreen": supported values: "Recreate", "RollingUpdate"',
    ),
    Case(
        "recreate-with-rolling-update",
        "Deployment",
        {"spec.strategy.type": "Recreate"},
        "spec.strategy.rollingUpdate",
        F,
        "Forbidden: may not be specified when strategy `type` is 'Recreate'",
    ),
    Case(
        "max-surge-not-percent",
        "Deployment",
        {"spec.strategy.rollingUpdate.maxSurge": "25"},
        "spec.strategy.rollingUpdate.maxSurge",
        IV,
        "Invalid value: \"25\": must be an integer or a percentage (e.g. '25%')",
    ),
    Case(
        "max-unavailable-over-100-percent",
        "Deployment",
        {"spec.strategy.rollingUpdate.maxUnavailable": "150%"},
        "spec.strategy.rollingUpdate.maxUnavailable",
        IV,
        'Invalid value: "150%": must not be greater than 100%',
    ),
    Case(
        "max-unavailable-negative",
        "Deployment",
        {"spec.strategy.rollingUpdate.maxUnavailable": -1},
        "spec.strategy.rollingUpdate.maxUnavailable",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "surge-and-unavailable-both-zero",
        "Deployment",
        {"spec.strategy.rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}},
        "spec.strategy.rollingUpdate.maxUnavailable",
        IV,
        'Invalid value: "0%": may not be 0 when `maxSurge` is 0',
    ),
    Case(
        "progress-deadline-not-above-min-ready",
        "Deployment",
        {"spec.minReadySeconds": 600},
        "spec.progressDeadlineSeconds",
        IV,
        "Invalid value: 600: must be greater than minReadySeconds",
    ),
    Case(
        "revision-history-negative",
        "Deployment",
        {"spec.revisionHistoryLimit": -1},
        "spec.revisionHistoryLimit",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "paused-not-a-boolean",
        "Deployment",
        {"spec.paused": "true"},
        "spec.paused",
        T,
        'Invalid value: "true": must be a boolean',
    ),
    Case(
        "deployment-status-negative",
        "Deployment",
        {"status": {"unavailableReplicas": -1}},
        "status.unavailableReplicas",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "deployment-condition-unknown-field",
        "Deployment",
        {
            "status": {
                "conditions": [{"type": "Available", "status": "True", "lastProbeTime": None}]
            }
        },
        "status.conditions[0].lastProbeTime",
        U,
        "unknown field",
    ),
    # services
    Case(
        "service-port-missing",
        "Service",
        {"spec.ports": [{"targetPort": 80}]},
        "spec.ports[0].port",
        R,
        "Required value",
    ),
    Case(
        "service-port-zero",
        "Service",
        {"spec.ports[0].port": 0},
        "spec.ports[0].port",
        IV,
        "Invalid value: 0: must be a port number between 1 and 65535",
    ),
    Case("service-without-ports", "Service", {"spec.ports": []}, "spec.ports", R, "Required value"),
    Case(
        "service-ports-need-names",
        "Service",
        {"spec.ports": [{"name": "http", "port": 80}, {"port": 443}]},
        "spec.ports[1].name",
        R,
        "Required value: a name is required when a Service has several ports",
    ),
    Case(
        "service-port-name-duplicate",
        "Service",
        {"spec.ports": [{"name": "http", "port": 80}, {"name": "http", "port": 443}]},
        "spec.ports[1].name",
        DUP,
        'Duplicate value: "http"',
    ),
    Case(
        "service-port-name-not-a-label",
        "Service",
        {"spec.ports[0].name": "HTTP"},
        "spec.ports[0].name",
        IV,
        'Invalid value: "HTTP": must be a lowercase RFC 1123 label',
    ),
    Case(
        "service-port-and-protocol-twice",
        "Service",
        {"spec.ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]},
        "spec.ports[1]",
        DUP,
        'Duplicate value: {"port":80,"protocol":"TCP"}',
    ),
    Case(
        "service-target-port-bad-name",
        "Service",
        {"spec.ports[0].targetPort": "Web_Port"},
        "spec.ports[0].targetPort",
        IV,
        'Invalid value: "Web_Port": must contain only lowercase letters',
    ),
    Case(
        "service-target-port-too-big",
        "Service",
        {"spec.ports[0].targetPort": 70000},
        "spec.ports[0].targetPort",
        IV,
        "Invalid value: 70000: must be a port number between 1 and 65535",
    ),
    Case(
        "service-target-port-not-int-or-string",
        "Service",
        {"spec.ports[0].targetPort": 8.5},
        "spec.ports[0].targetPort",
        T,
        "Invalid value: 8.5: must be an integer or a string",
    ),
    Case(
        "service-node-port-on-cluster-ip",
        "Service",
        {"spec.ports[0].nodePort": 30080},
        "spec.ports[0].nodePort",
        F,
        "Forbidden: may not be used when `type` is 'ClusterIP'",
    ),
    Case(
        "service-type-unsupported",
        "Service",
        {"spec.type": "Internal"},
        "spec.type",
        NS,
        'Unsupported value: "Internal": supported values: "ClusterIP", "ExternalName", '
        '"LoadBalancer", "NodePort"',
    ),
    Case(
        "service-cluster-ip-invalid",
        "Service",
        {"spec.clusterIP": "10.96.0.300"},
        "spec.clusterIP",
        IV,
        'Invalid value: "10.96.0.300": must be a valid IP address',
    ),
    Case(
        "service-cluster-ips-disagree",
        "Service",
        {"spec.clusterIP": "10.96.0.10", "spec.clusterIPs": ["10.96.0.11"]},
        "spec.clusterIPs[0]",
        IV,
        'Invalid value: "10.96.0.11": must be the same as `spec.clusterIP`',
    ),
    Case(
        "service-session-affinity-unsupported",
        "Service",
        {"spec.sessionAffinity": "Cookie"},
        "spec.sessionAffinity",
        NS,
        'Unsupported value: "Cookie": supported values: "ClientIP", "None"',
    ),
    Case(
        "service-affinity-timeout-zero",
        "Service",
        {
            "spec.sessionAffinity": "ClientIP",
            "spec.sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
        },
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        IV,
        "Invalid value: 0: must be greater than 0 and less than or equal to 86400",
    ),
    Case(
        "service-affinity-config-without-client-ip",
        "Service",
        {"spec.sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
        "spec.sessionAffinityConfig",
        F,
        "Forbidden: may only be set when `sessionAffinity` is 'ClientIP'",
    ),
    Case(
        "service-external-policy-on-cluster-ip",
        "Service",
        {"spec.externalTrafficPolicy": "Local"},
        "spec.externalTrafficPolicy",
        IV,
        "Invalid value: \"Local\": may only be set when `type` is 'NodePort' or 'LoadBalancer'",
    ),
    Case(
        "service-external-name-missing",
        "Service",
        {"spec.type": "ExternalName", "spec.ports": [], "spec.internalTrafficPolicy": DELETE},
        "spec.externalName",
        R,
        "Required value",
    ),
    Case(
        "service-external-ip-invalid",
        "Service",
        {"spec.externalIPs": ["example.com"]},
        "spec.externalIPs[0]",
        IV,
        'Invalid value: "example.com": must be a valid IP address',
    ),
    Case(
        "service-selector-bad-value",
        "Service",
        {"spec.selector": {"app": "web/1"}},
        "spec.selector",
        IV,
        'Invalid value: "web/1": a label value must be empty',
    ),
    Case(
        "service-ip-family-unsupported",
        "Service",
        {"spec.ipFamilies": ["IPv5"]},
        "spec.ipFamilies[0]",
        NS,
        'Unsupported value: "IPv5": supported values: "IPv4", "IPv6"',
    ),
    Case(
        "service-status-unknown-field",
        "Service",
        {"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "port": 80}]}}},
        "status.loadBalancer.ingress[0].port",
        U,
        "unknown field",
    ),
    # endpoints
    Case(
        "endpoint-ip-invalid",
        "Endpoints",
        {"subsets[0].addresses[0].ip": "10.244.1"},
        "subsets[0].addresses[0].ip",
        IV,
        'Invalid value: "10.244.1": must be a valid IP address',
    ),
    Case(
        "endpoint-ip-missing",
        "Endpoints",
        {"subsets[0].addresses[0]": {"nodeName": "node-1"}},
        "subsets[0].addresses[0].ip",
        R,
        "Required value",
    ),
    Case(
        "endpoint-ip-unspecified",
        "Endpoints",
        {"subsets[0].addresses[0].ip": "0.0.0.0"},
        "subsets[0].addresses[0].ip",
        IV,
        'Invalid value: "0.0.0.0": may not be unspecified',
    ),
    Case(
        "endpoint-hostname-invalid",
        "Endpoints",
        {"subsets[0].addresses[0].hostname": "Web_1"},
        "subsets[0].addresses[0].hostname",
        IV,
        'Invalid value: "Web_1": must be a lowercase RFC 1123 label',
    ),
    Case(
        "endpoint-ports-need-names",
        "Endpoints",
        {"subsets[0].ports": [{"name": "a", "port": 80}, {"port": 81}]},
        "subsets[0].ports[1].name",
        R,
        "Required value: a name is required when a subset has several ports",
    ),
    Case(
        "endpoint-port-too-big",
        "Endpoints",
        {"subsets[0].ports[0].port": 65536},
        "subsets[0].ports[0].port",
        IV,
        "Invalid value: 65536: must be a port number between 1 and 65535",
    ),
    Case(
        "endpoint-subset-unknown-field",
        "Endpoints",
        {"subsets[0].readyAddresses": []},
        "subsets[0].readyAddresses",
        U,
        "unknown field",
    ),
    # configmaps
    Case(
        "configmap-key-invalid",
        "ConfigMap",
        {"data": {"app conf": "x"}},
        "data[app conf]",
        IV,
        'Invalid value: "app conf": must consist of letters, digits',
    ),
    Case(
        "configmap-key-dot-dot",
        "ConfigMap",
        {"data": {"..data": "x"}},
        "data[..data]",
        IV,
        "Invalid value: \"..data\": must not be '.' or '..' nor start with '..'",
    ),
    Case(
        "configmap-value-not-a-string",
        "ConfigMap",
        {"data": {"replicas": 3}},
        "data[replicas]",
        T,
        "Invalid value: 3: must be a string",
    ),
    Case(
        "configmap-binary-not-base64",
        "ConfigMap",
        {"binaryData": {"logo.png": "not base64!"}},
        "binaryData[logo.png]",
        IV,
        'Invalid value: "not base64!": must be base64-encoded',
    ),
    Case(
        "configmap-key-in-data-and-binary",
        "ConfigMap",
        {"binaryData": {"app.conf": "eD0x"}},
        "binaryData[app.conf]",
        DUP,
        'Duplicate value: "app.conf"',
    ),
    Case(
        "configmap-over-1mib",
        "ConfigMap",
        {"data": {"big": "x" * (1024 * 1024)}},
        "data",
        TL,
        "Too long: may not be more than 1048576 bytes",
    ),
    Case(
        "configmap-immutable-not-a-boolean",
        "ConfigMap",
        {"immutable": "yes"},
        "immutable",
        T,
        'Invalid value: "yes": must be a boolean',
    ),
    Case("configmap-spec-unknown", "ConfigMap", {"spec": {"data": {}}}, "spec", U, "unknown field"),
    # nodes
    Case(
        "node-pod-cidr-invalid",
        "Node",
        {"spec.podCIDR": "10.244.1.0"},
        "spec.podCIDR",
        IV,
        'Invalid value: "10.244.1.0": must be a valid CIDR value',
    ),
    Case(
        "node-pod-cidrs-disagree",
        "Node",
        {"spec.podCIDR": "10.244.1.0/24", "spec.podCIDRs": ["10.244.2.0/24"]},
        "spec.podCIDRs[0]",
        IV,
        'Invalid value: "10.244.2.0/24": must be the same as `spec.podCIDR`',
    ),
    Case(
        "node-taint-effect-missing",
        "Node",
        {"spec.taints": [{"key": "dedicated"}]},
        "spec.taints[0].effect",
        R,
        "Required value",
    ),
    Case(
        "node-taint-effect-unsupported",
        "Node",
        {"spec.taints": [{"key": "dedicated", "effect": "NoWay"}]},
        "spec.taints[0].effect",
        NS,
        'Unsupported value: "NoWay": supported values: "NoExecute", "NoSchedule", '
        '"PreferNoSchedule"',
    ),
    Case(
        "node-taint-key-invalid",
        "Node",
        {"spec.taints": [{"key": "bad key", "effect": "NoSchedule"}]},
        "spec.taints[0].key",
        IV,
        'Invalid value: "bad key": name part must consist of',
    ),
    Case(
        "node-taint-duplicate",
        "Node",
        {
            "spec.taints": [
                {"key": "a", "effect": "NoSchedule"},
                {"key": "a", "value": "x", "effect": "NoSchedule"},
            ]
        },
        "spec.taints[1]",
        DUP,
        'Duplicate value: {"key":"a","effect":"NoSchedule"}',
    ),
    Case(
        "node-capacity-not-a-quantity",
        "Node",
        {"status.capacity.memory": "4 GB"},
        "status.capacity[memory]",
        IV,
        'Invalid value: "4 GB": must be a quantity',
    ),
    Case(
        "node-capacity-bad-resource-name",
        "Node",
        {"status.capacity": {"cpu cores": "2"}},
        "status.capacity[cpu cores]",
        IV,
        'Invalid value: "cpu cores": name part must consist of',
    ),
    Case(
        "node-address-type-unsupported",
        "Node",
        {"status.addresses": [{"type": "PublicIP", "address": "1.2.3.4"}]},
        "status.addresses[0].type",
        NS,
        'Unsupported value: "PublicIP"',
    ),
    Case(
        "node-internal-ip-invalid",
        "Node",
        {"status.addresses": [{"type": "InternalIP", "address": "node-1"}]},
        "status.addresses[0].address",
        IV,
        'Invalid value: "node-1": must be a valid IP address',
    ),
    Case(
        "node-condition-status-missing",
        "Node",
        {"status.conditions": [{"type": "Ready"}]},
        "status.conditions[0].status",
        R,
        "Required value",
    ),
    Case(
        "node-kubelet-port-zero",
        "Node",
        {"status.daemonEndpoints": {"kubeletEndpoint": {"Port": 0}}},
        "status.daemonEndpoints.kubeletEndpoint.Port",
        IV,
        "Invalid value: 0: must be a port number between 1 and 65535",
    ),
    Case(
        "node-info-unknown-field",
        "Node",
        {"status.nodeInfo": {"cpuModel": "x"}},
        "status.nodeInfo.cpuModel",
        U,
        "unknown field",
    ),
    Case(
        "node-unschedulable-not-a-boolean",
        "Node",
        {"spec.unschedulable": 1},
        "spec.unschedulable",
        T,
        "Invalid value: 1: must be a boolean",
    ),
    # events
    Case(
        "event-involved-object-missing",
        "Event",
        {"involvedObject": DELETE},
        "involvedObject",
        R,
        "Required value",
    ),
    Case(
        "event-type-unsupported",
        "Event",
        {"type": "Info"},
        "type",
        NS,
        'Unsupported value: "Info": supported values: "Normal", "Warning"',
    ),
    Case(
        "event-namespace-mismatch",
        "Event",
        {"involvedObject.namespace": "shop"},
        "involvedObject.namespace",
        IV,
        'Invalid value: "shop": does not match the Event\'s namespace',
    ),
    Case(
        "event-new-style-without-reporter",
        "Event",
        {
            "eventTime": "2024-05-01T12:00:00.000001Z",
            "action": "Binding",
            "reportingInstance": "scheduler-1",
        },
        "reportingComponent",
        R,
        "Required value: must be set on an Event with `eventTime`",
    ),
    Case(
        "event-count-negative",
        "Event",
        {"count": -1},
        "count",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case("event-spec-unknown", "Event", {"spec": {}}, "spec", U, "unknown field"),
    # leases
    Case(
        "lease-duration-zero",
        "Lease",
        {"spec.leaseDurationSeconds": 0},
        "spec.leaseDurationSeconds",
        IV,
        "Invalid value: 0: must be greater than 0",
    ),
    Case(
        "lease-transitions-negative",
        "Lease",
        {"spec.leaseTransitions": -1},
        "spec.leaseTransitions",
        IV,
        "Invalid value: -1: must be greater than or equal to 0",
    ),
    Case(
        "lease-renew-time-invalid",
        "Lease",
        {"spec.renewTime": "12:00"},
        "spec.renewTime",
        IV,
        'Invalid value: "12:00": must be an RFC 3339 date-time',
    ),
    Case(
        "lease-holder-not-a-string",
        "Lease",
        {"spec.holderIdentity": 7},
        "spec.holderIdentity",
        T,
        "Invalid value: 7: must be a string",
    ),
    # namespaces
    Case(
        "namespace-finalizer-not-qualified",
        "Namespace",
        {"spec.finalizers": ["cleanup"]},
        "spec.finalizers[0]",
        IV,
        'Invalid value: "cleanup": must be a standard finalizer',
    ),
    Case(
        "namespace-phase-unsupported",
        "Namespace",
        {"status.phase": "Deleting"},
        "status.phase",
        NS,
        'Unsupported value: "Deleting": supported values: "Active", "Terminating"',
    ),
]


def _with_changes(case: Case) -> dict[str, Any]:
    obj = defaulted(BUILDERS[case.kind]())
    for path, value in case.changes.items():
        change(obj, path, value)
    return obj


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case) -> None:
    causes = validation.validate(_with_changes(case))
    assert len(causes) == 1, [str(c) for c in causes]
    (cause,) = causes
    assert (cause.field, cause.reason) == (case.field, case.reason), str(cause)
    assert cause.message.startswith(case.message), cause.message


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


VALID_VARIATIONS = [
    ("generate-name-ending-in-dash", "Pod", {"metadata.generateName": "web-"}),
    (
        "extended-resource-with-domain",
        "Pod",
        {f"{C0}.resources": {"limits": {"example.com/gpu": "2"}}},
    ),
    (
        "hugepages-resource",
        "Pod",
        {f"{C0}.resources": {"limits": {"hugepages-2Mi": "64Mi", "memory": "64Mi"}}},
    ),
    (
        "quantity-as-number",
        "Pod",
        {f"{C0}.resources": {"requests": {"cpu": 0.5, "memory": 1048576}}},
    ),
    (
        "requests-equal-to-limits",
        "Pod",
        {f"{C0}.resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1000m"}}},
    ),
    (
        "label-value-empty",
        "Pod",
        {"metadata.labels": {"node-role.kubernetes.io/control-plane": ""}},
    ),
    ("label-key-with-prefix", "Pod", {"metadata.labels": {"app.kubernetes.io/name": "My_App.v2"}}),
    (
        "sidecar-init-container-with-probe",
        "Pod",
        {
            "spec.initContainers": [
                {
                    "name": "side",
                    "image": "x",
                    "restartPolicy": "Always",
                    "readinessProbe": {"tcpSocket": {"port": 80}},
                }
            ]
        },
    ),
    ("target-port-by-name", "Service", {"spec.ports[0].targetPort": "http"}),
    ("headless-without-ports", "Service", {"spec.clusterIP": "None", "spec.ports": []}),
    (
        "service-ipv6-cluster-ip",
        "Service",
        {"spec.clusterIP": "fd00:10:96::a", "spec.clusterIPs": ["fd00:10:96::a"]},
    ),
    ("deployment-recreate", "Deployment", {"spec.strategy": {"type": "Recreate"}}),
    ("deployment-zero-replicas", "Deployment", {"spec.replicas": 0}),
    (
        "deployment-surge-zero-unavailable-one",
        "Deployment",
        {"spec.strategy.rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
    ),
    (
        "selector-by-expression-only",
        "Deployment",
        {"spec.selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}},
    ),
    ("toleration-match-all", "Pod", {"spec.tolerations": [{"operator": "Exists"}]}),
    (
        "node-affinity-gt",
        "Pod",
        {
            "spec.affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "cores", "operator": "Gt", "values": ["4"]}
                                ],
                                "matchFields": [
                                    {"key": "metadata.name", "operator": "In", "values": ["node-1"]}
                                ],
                            }
                        ]
                    }
                }
            }
        },
    ),
    (
        "pod-bound-with-timestamps-null",
        "Pod",
        {
            "spec.nodeName": "node-1",
            "status": {
                "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None}]
            },
        },
    ),
    ("endpoints-loopback-address", "Endpoints", {"subsets[0].addresses[0].ip": "127.0.0.1"}),
    (
        "event-about-node-in-default",
        "Event",
        {"involvedObject": {"kind": "Node", "name": "node-1"}},
    ),
    (
        "node-ipv6-pod-cidr",
        "Node",
        {"spec.podCIDR": "fd00:10:244:1::/64", "spec.podCIDRs": ["fd00:10:244:1::/64"]},
    ),
    (
        "configmap-immutable",
        "ConfigMap",
        {"immutable": True, "binaryData": {"logo": "iVBORw0KGgo="}},
    ),
    ("namespace-terminating", "Namespace", {"status.phase": "Terminating", "spec.finalizers": []}),
]


@pytest.mark.parametrize(
    ("kind", "changes"), [v[1:] for v in VALID_VARIATIONS], ids=[v[0] for v in VALID_VARIATIONS]
)
def test_valid_variation(kind: str, changes: dict[str, Any]) -> None:
    obj = defaulted(BUILDERS[kind]())
    for path, value in changes.items():
        change(obj, path, value)
    assert [str(c) for c in validation.validate(obj)] == []


# -- properties of the whole result ----------------------------------------------------------


def test_every_failing_field_is_reported_in_path_order() -> None:
    obj = defaulted(deployment())
    change(obj, "metadata.name", "Web_App")
    change(obj, "spec.replicas", -1)
    change(obj, f"{TC0}.image", DELETE)
    change(obj, f"{TC0}.imagee", "httpd")
    change(obj, f"{TS}.restartPolicy", "Sometimes")
    containers = obj["spec"]["template"]["spec"]["containers"]
    containers += [{"name": f"c{i}", "image": "x"} for i in range(1, 11)]
    containers[10]["ports"] = [{"containerPort": 0}]
    containers[2]["ports"] = [{"containerPort": 0}]
    fields = [c.field for c in validation.validate(obj)]
    assert fields == [
        "metadata.name",
        "spec.replicas",
        f"{TC0}.image",
        f"{TC0}.imagee",
        f"{TS}.containers[2].ports[0].containerPort",
        f"{TS}.containers[10].ports[0].containerPort",
        f"{TS}.restartPolicy",
    ]


def test_invalid_error_text_joins_every_cause() -> None:
    obj = defaulted(deployment())
    change(obj, "metadata.name", "Web_App")
    change(obj, f"{TC0}.image", DELETE)
    causes = validation.validate(obj)
    text = str(errors.Invalid.for_causes("Deployment", "Web_App", causes))
    assert text.startswith(
        'Deployment "Web_App" is invalid: metadata.name: Invalid value: "Web_App": '
    )
    assert text.endswith("; spec.template.spec.containers[0].image: Required value")


def test_no_second_cause_for_a_field_the_schema_rejected() -> None:
    obj = defaulted(pod())
    change(obj, "metadata.name", 42)  # a type error; no name-syntax error on top
    assert [str(c) for c in validation.validate(obj)] == [
        "metadata.name: Invalid value: 42: must be a string"
    ]


def test_same_problem_twice_is_reported_once() -> None:
    obj = defaulted(pod())
    change(obj, "metadata.labels", {"Bad/x": "1", "ok": "1"})
    change(obj, "spec.nodeSelector", {"Bad/x": "1"})
    causes = validation.validate(obj)
    assert len(causes) == len({(c.field, c.message) for c in causes}) == 2


def test_result_is_deterministic() -> None:
    obj = defaulted(deployment())
    change(obj, f"{TC0}.ports", [{"containerPort": 0, "name": "HTTP", "protocol": "X"}])
    change(obj, "spec.selector", {})
    first = validation.validate(copy.deepcopy(obj))
    assert [validation.validate(copy.deepcopy(obj)) for _ in range(3)] == [first] * 3


@pytest.mark.parametrize("value", [None, [], "pod", 3], ids=["null", "list", "string", "number"])
def test_a_non_object_is_one_type_error(value: Any) -> None:
    causes = validation.validate(value)
    assert [c.reason for c in causes] == [validation.TYPE_INVALID]


def test_huge_values_are_cut_short_in_messages() -> None:
    obj = defaulted(pod())
    change(obj, "metadata.name", "X" * 10_000)
    (cause,) = validation.validate(obj)
    assert len(cause.message) < 1000 and "(truncated)" in cause.message


# -- the two schema engines agree ------------------------------------------------------------

_ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -3,
    1.5,
    70000,
    "",
    "x",
    "Bad Value",
    [],
    ["x"],
    {},
    {"k": "v"},
]


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _nodes(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _nodes(child, (*path, i))
    return out


def _mutate(obj: dict[str, Any], rng: random.Random) -> None:
    path = rng.choice(_nodes(obj)[1:])
    parent: Any = obj
    for step in path[:-1]:
        parent = parent[step]
    action = rng.randrange(3)
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == 1 and isinstance(parent[path[-1]], dict):
        parent[path[-1]]["unexpectedField"] = 1
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(_ODD_VALUES))


def test_fast_check_and_explainer_agree_on_mutated_manifests() -> None:
    """The compiled check decides whether the explainer runs; it must never say valid wrongly."""
    rng = random.Random(20240501)
    names = list(MANIFESTS)
    for _ in range(600):
        obj = defaulted(manifest(rng.choice(names)))
        for _ in range(rng.randint(1, 3)):
            _mutate(obj, rng)
        kind = kinds.by_kind(obj["kind"]) if isinstance(obj.get("kind"), str) else None
        if kind is None:
            continue
        compiled = validation._compiled(kind.resource)
        explained = list(compiled.explainer.iter_errors(obj))
        try:
            compiled.is_valid(obj)
            fast_says_valid = True
        except fastjsonschema.JsonSchemaValueException:
            fast_says_valid = False
        assert fast_says_valid == (not explained), (obj, [e.message for e in explained])


SCHEMA_CASES = [c for c in CASES if "kind" not in c.changes]  # others never reach a schema


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c.id for c in SCHEMA_CASES])
def test_fast_check_agrees_on_rule_cases(case: Case) -> None:
    obj = _with_changes(case)
    kind = kinds.by_kind(obj["kind"])
    assert kind is not None
    compiled = validation._compiled(kind.resource)
    explained = bool(list(compiled.explainer.iter_errors(obj)))
    try:
        compiled.is_valid(obj)
        fast_invalid = False
    except fastjsonschema.JsonSchemaValueException:
        fast_invalid = True
    assert fast_invalid == explained


# -- updates ---------------------------------------------------------------------------------


def _stored(builder: Any, **meta: Any) -> dict[str, Any]:
    obj = defaulted(builder())
    obj["metadata"].update(
        uid="6f1c2b9e-3d4a-4b5c-8d7e-1f2a3b4c5d6e",
        creationTimestamp="2024-05-01T12:00:00Z",
        resourceVersion="10",
        **meta,
    )
    return obj


@dataclasses.dataclass(frozen=True)
class UpdateCase:
    id: str
    kind: str
    old: dict[str, Any]  # changes that make the stored object
    new: dict[str, Any]  # changes on top of `old` that make the update
    # Each cause's str() in order, given by its start or as "start…end"; [] means allowed.
    expected: list[str]


POD_SPEC_RULE = (
    "spec: Forbidden: pod updates may not change fields other than spec.containers[*].image"
)

UPDATE_CASES = [
    UpdateCase("labels-may-change", "Pod", {}, {"metadata.labels": {"app": "web", "v": "2"}}, []),
    UpdateCase(
        "name-is-immutable",
        "Pod",
        {},
        {"metadata.name": "web2"},
        ['metadata.name: Invalid value: "web2": field is immutable'],
    ),
    UpdateCase(
        "namespace-is-immutable",
        "ConfigMap",
        {},
        {"metadata.namespace": "other"},
        ['metadata.namespace: Invalid value: "other": field is immutable'],
    ),
    UpdateCase(
        "uid-is-immutable",
        "ConfigMap",
        {},
        {"metadata.uid": "other"},
        ['metadata.uid: Invalid value: "other": field is immutable'],
    ),
    UpdateCase(
        "creation-timestamp-is-immutable",
        "ConfigMap",
        {},
        {"metadata.creationTimestamp": "2025-01-01T00:00:00Z"},
        ['metadata.creationTimestamp: Invalid value: "2025-01-01T00:00:00Z": field is immutable'],
    ),
    UpdateCase("uid-omitted-is-not-a-change", "ConfigMap", {}, {"metadata.uid": DELETE}, []),
    UpdateCase(
        "deletion-timestamp-not-by-update",
        "ConfigMap",
        {},
        {"metadata.deletionTimestamp": "2025-01-01T00:00:00Z"},
        [
            'metadata.deletionTimestamp: Invalid value: "2025-01-01T00:00:00Z": field is '
            "immutable; set only by a delete"
        ],
    ),
    UpdateCase(
        "kind-is-immutable",
        "ConfigMap",
        {},
        {"kind": "Secret"},
        ['kind: Invalid value: "Secret": field is immutable'],
    ),
    UpdateCase(
        "deployment-selector-is-immutable",
        "Deployment",
        {},
        {"spec.selector": {"matchLabels": {"app": "web", "v": "2"}}},
        ['spec.selector: Invalid value: {"matchLabels":{"app":"web","v":"2"}}: field is immutable'],
    ),
    UpdateCase(
        "replicaset-selector-is-immutable",
        "ReplicaSet",
        {},
        {"spec.selector.matchLabels.app": "api"},
        ["spec.selector: Invalid value: "],
    ),
    UpdateCase(
        "deployment-template-may-change",
        "Deployment",
        {},
        {f"{TC0}.image": "httpd:2.5", "spec.replicas": 5},
        [],
    ),
    UpdateCase("pod-image-may-change", "Pod", {}, {f"{C0}.image": "busybox:1.37"}, []),
    UpdateCase(
        "pod-init-image-may-change",
        "Pod",
        {"spec.initContainers": [{"name": "i", "image": "a"}]},
        {"spec.initContainers[0].image": "b"},
        [],
    ),
    UpdateCase(
        "pod-restart-policy-is-immutable",
        "Pod",
        {},
        {"spec.restartPolicy": "Never"},
        [POD_SPEC_RULE + "…; changed: spec.restartPolicy"],
    ),
    UpdateCase(
        "pod-container-may-not-be-added",
        "Pod",
        {},
        {"spec.containers[1]": {"name": "b", "image": "x"}},
        [POD_SPEC_RULE + "…; changed: spec.containers"],
    ),
    UpdateCase(
        "pod-container-env-is-immutable",
        "Pod",
        {},
        {f"{C0}.env": [{"name": "A", "value": "1"}]},
        [POD_SPEC_RULE + "…; changed: spec.containers[0].env"],
    ),
    UpdateCase("pod-deadline-may-be-set", "Pod", {}, {"spec.activeDeadlineSeconds": 60}, []),
    UpdateCase(
        "pod-deadline-may-shrink",
        "Pod",
        {"spec.activeDeadlineSeconds": 60},
        {"spec.activeDeadlineSeconds": 30},
        [],
    ),
    UpdateCase(
        "pod-deadline-may-not-grow",
        "Pod",
        {"spec.activeDeadlineSeconds": 60},
        {"spec.activeDeadlineSeconds": 90},
        [
            "spec.activeDeadlineSeconds: Invalid value: 90: must be less than or equal to the "
            "previous value 60"
        ],
    ),
    UpdateCase(
        "pod-deadline-may-not-be-removed",
        "Pod",
        {"spec.activeDeadlineSeconds": 60},
        {"spec.activeDeadlineSeconds": DELETE},
        ["spec.activeDeadlineSeconds: Invalid value: null: must not be removed once set"],
    ),
    UpdateCase(
        "pod-toleration-may-be-added",
        "Pod",
        {"spec.tolerations": [{"key": "a", "operator": "Exists"}]},
        {"spec.tolerations[1]": {"key": "b", "operator": "Exists"}},
        [],
    ),
    UpdateCase(
        "pod-toleration-may-not-be-removed",
        "Pod",
        {"spec.tolerations": [{"key": "a", "operator": "Exists"}]},
        {"spec.tolerations": []},
        [
            'spec.tolerations: Forbidden: existing toleration {"key":"a","operator":"Exists"} '
            "may not be removed or changed"
        ],
    ),
    UpdateCase("pod-node-name-may-be-set-once", "Pod", {}, {"spec.nodeName": "node-1"}, []),
    UpdateCase(
        "pod-node-name-may-not-change",
        "Pod",
        {"spec.nodeName": "node-1"},
        {"spec.nodeName": "node-2"},
        ['spec.nodeName: Invalid value: "node-2": field is immutable once set'],
    ),
    UpdateCase(
        "pod-node-name-may-not-be-cleared",
        "Pod",
        {"spec.nodeName": "node-1"},
        {"spec.nodeName": DELETE},
        ["spec.nodeName: Invalid value: null: field is immutable once set"],
    ),
    UpdateCase("pod-status-may-change", "Pod", {}, {"status": {"phase": "Running"}}, []),
    UpdateCase("service-cluster-ip-may-be-set", "Service", {}, {"spec.clusterIP": "10.96.0.5"}, []),
    UpdateCase(
        "service-cluster-ip-may-not-change",
        "Service",
        {"spec.clusterIP": "10.96.0.5", "spec.clusterIPs": ["10.96.0.5"]},
        {"spec.clusterIP": "10.96.0.6", "spec.clusterIPs": ["10.96.0.6"]},
        [
            'spec.clusterIP: Invalid value: "10.96.0.6": field is immutable once set',
            'spec.clusterIPs[0]: Invalid value: "10.96.0.6": field is immutable once set',
        ],
    ),
    UpdateCase(
        "service-to-external-name-drops-ip",
        "Service",
        {"spec.clusterIP": "10.96.0.5"},
        {"spec.type": "ExternalName", "spec.clusterIP": DELETE, "spec.externalName": "example.com"},
        [],
    ),
    UpdateCase(
        "service-ports-may-change",
        "Service",
        {"spec.clusterIP": "10.96.0.5"},
        {"spec.ports[0].port": 8080},
        [],
    ),
    UpdateCase(
        "node-pod-cidr-may-be-set",
        "Node",
        {},
        {"spec.podCIDR": "10.244.1.0/24", "spec.podCIDRs": ["10.244.1.0/24"]},
        [],
    ),
    UpdateCase(
        "node-pod-cidr-may-not-change",
        "Node",
        {"spec.podCIDR": "10.244.1.0/24"},
        {"spec.podCIDR": "10.244.2.0/24"},
        ['spec.podCIDR: Invalid value: "10.244.2.0/24": field is immutable once set'],
    ),
    UpdateCase(
        "node-may-be-cordoned",
        "Node",
        {"spec.podCIDR": "10.244.1.0/24"},
        {"spec.unschedulable": True},
        [],
    ),
    UpdateCase("configmap-data-may-change", "ConfigMap", {}, {"data": {"app.conf": "x=2"}}, []),
    UpdateCase(
        "immutable-configmap-data",
        "ConfigMap",
        {"immutable": True},
        {"data": {"app.conf": "x=2"}},
        ["data: Forbidden: field is immutable when `immutable` is set"],
    ),
    UpdateCase(
        "immutable-configmap-flag",
        "ConfigMap",
        {"immutable": True},
        {"immutable": False},
        ["immutable: Forbidden: field is immutable when `immutable` is set"],
    ),
    UpdateCase(
        "immutable-configmap-labels-may-change",
        "ConfigMap",
        {"immutable": True},
        {"metadata.labels": {"a": "b"}},
        [],
    ),
]


@pytest.mark.parametrize("case", UPDATE_CASES, ids=[c.id for c in UPDATE_CASES])
def test_update_rule(case: UpdateCase) -> None:
    old = _stored(BUILDERS[case.kind])
    for path, value in case.old.items():
        change(old, path, value)
    new = copy.deepcopy(old)
    for path, value in case.new.items():
        change(new, path, value)
    causes = [str(c) for c in validation.validate_update(old, new)]
    assert len(causes) == len(case.expected), causes
    for got, want in zip(causes, case.expected, strict=True):
        start, _, end = want.partition("…")
        assert got.startswith(start) and got.endswith(end), got


def test_update_ids_are_unique() -> None:
    ids = [c.id for c in UPDATE_CASES]
    assert len(ids) == len(set(ids))


def test_pod_update_names_every_changed_field() -> None:
    old = _stored(pod)
    new = copy.deepcopy(old)
    change(new, "spec.restartPolicy", "Never")
    change(new, "spec.dnsPolicy", "Default")
    (cause,) = validation.validate_update(old, new)
    assert cause.reason == validation.FORBIDDEN
    assert cause.message.endswith("changed: spec.dnsPolicy, spec.restartPolicy")

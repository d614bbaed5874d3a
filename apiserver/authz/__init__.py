"""Authorization of API requests: who may do what, decided from the API server's own caches.

- rbac: Role, ClusterRole, RoleBinding and ClusterRoleBinding, as in Kubernetes'
  rbac.authorization.k8s.io/v1. Never denies: it allows or has no opinion.
- node: what a node identity (system:node:<name> in system:nodes) may do, limited
  to its own Node, Lease and Pods, and to the Secrets and ConfigMaps those Pods use.
- bootstrap: the built-in ClusterRoles and ClusterRoleBindings the components need,
  written at API server start when missing.

Each authorizer is an apiserver.auth.Authorizer: synchronous, answering from the
WatchCaches the server already keeps, so authorizing costs no etcd read.
"""

"""The suite's cluster PKI: the CA and certificates a bring-up would issue, for tests.

Tests talk to the API server the way the product does: mutual TLS, each
client with a certificate from the cluster CA naming who it is. One
ClusterPKI is made per session (tests/conftest.py `cluster_pki`) and every
API server a test starts trusts its CA; a certificate is issued once per
identity and reused, so asking for the same user twice costs nothing.

Identities follow the cluster's conventions (machinery.auth): the admin is
`kubernetes-admin` in `system:masters`, which bypasses authorization, so a
test that is not about authorization passes whatever the authorizers say;
a node is `system:node:<name>` in `system:nodes`.

Nothing here is a fake: the certificates are real ECDSA certificates from
machinery.pki and the server checks them as it checks any other.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from apiserver.server import ServingTLS
from machinery import auth, config, pki
from machinery.credentials import Credentials
from machinery.pki import KeyPair, Subject

# The names the API server's certificate is valid for: tests dial loopback by address.
SERVER_NAMES = ("127.0.0.1", "localhost", "::1")
CONTEXT = "kubelite-test"


class ClusterPKI:
    """A cluster CA with the API server's certificates and a cache of client ones."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.ca = pki.new_ca("kubelite-test-ca")
        self.serving = pki.issue(
            self.ca,
            Subject("kube-apiserver"),
            client=False,
            server=True,
            alt_names=SERVER_NAMES,
        )
        self.kubelet_client = pki.issue(self.ca, Subject(auth.APISERVER_KUBELET_CLIENT))
        self._issued: dict[Subject, KeyPair] = {}
        self.ca_file = self._write_ca()

    def _write_ca(self) -> pathlib.Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "ca.crt"
        path.write_bytes(self.ca.cert)
        return path

    # -- client identities ------------------------------------------------------------------

    def key_pair(self, user: str, groups: Sequence[str] = ()) -> KeyPair:
        """The client certificate and key of user in groups, issued on first use."""
        subject = Subject(user, tuple(groups))
        if subject not in self._issued:
            self._issued[subject] = pki.issue(self.ca, subject)
        return self._issued[subject]

    def credentials_for(self, user: str, groups: Sequence[str] = ()) -> Credentials:
        pair = self.key_pair(user, groups)
        return Credentials(ca=self.ca.cert, cert=pair.cert, key=pair.key)

    @property
    def admin_credentials(self) -> Credentials:
        return self.credentials_for(auth.ADMIN_USER, (auth.MASTERS,))

    def node_credentials(self, node: str) -> Credentials:
        return self.credentials_for(auth.node_user(node), (auth.NODES_GROUP,))

    def token_credentials(self, token: str) -> Credentials:
        """A bearer-token client: TLS checked against the CA, no certificate of its own."""
        return Credentials(ca=self.ca.cert, token=token)

    def kubelet_serving(self, node: str, addresses: Sequence[str] = SERVER_NAMES) -> KeyPair:
        """A kubelet's serving certificate, as the kubelet-serving signer would issue it."""
        return pki.issue(
            self.ca,
            Subject(auth.node_user(node), (auth.NODES_GROUP,)),
            client=False,
            server=True,
            alt_names=(*addresses, node),
        )

    # -- the API server's side ----------------------------------------------------------------

    def serving_tls(self) -> ServingTLS:
        return ServingTLS(
            serving=self.serving,
            client_ca=self.ca.cert,
            kubelet_client=self.kubelet_client,
            kubelet_ca=self.ca.cert,
        )

    def server_settings(self) -> dict[str, Any]:
        """The ServerConfig fields that make an API server authenticate every request."""
        return {"tls": self.serving_tls(), "token_listen": "127.0.0.1:0"}

    # -- client config files ------------------------------------------------------------------

    def kubeconfig(
        self,
        path: pathlib.Path,
        servers: Sequence[str],
        credentials: Credentials | None = None,
        *,
        namespace: str = "default",
    ) -> pathlib.Path:
        """Write a machinery.config client config for servers, as admin unless told otherwise.

        The file is what kctl reads from $KUBELITE_CONFIG or --config, and what every
        component takes as --kubeconfig; a token-only credential lands under token-servers,
        so servers must then be the API server's token port.
        """
        ctx = config.Context(
            CONTEXT,
            list(servers),
            namespace,
            credentials or self.admin_credentials,
        )
        config.save_context(ctx, path)
        return path

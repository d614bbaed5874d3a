"""What a client shows the API server: the CA it trusts and its own credential.

A client holds either a certificate and key signed by the cluster CA (the
components, nodes and administrators) or a bearer token (bootstrap tokens,
ServiceAccounts, scripts); both travel over TLS checked against the CA.
"""

from __future__ import annotations

import dataclasses

import grpc


@dataclasses.dataclass(frozen=True)
class Credentials:
    ca: bytes  # PEM of the CA the server's certificate must chain to
    cert: bytes = b""  # PEM client certificate
    key: bytes = b""  # PEM private key of cert
    token: str = ""

    def channel_credentials(self) -> grpc.ChannelCredentials:
        tls = grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.key or None,
            certificate_chain=self.cert or None,
        )
        if self.token and not self.cert:
            return grpc.composite_channel_credentials(
                tls, grpc.access_token_call_credentials(self.token)
            )
        return tls

    def certificate_problem(self, now: float) -> str:
        """Why the server would refuse the client certificate for its dates, or "".

        The server refuses such a certificate in the TLS handshake, which the client
        sees only as a closed connection; saying it here names the real cause.
        """
        if not self.cert:
            return ""
        from machinery import pki  # cryptography is slow to import; kctl rarely needs it

        try:
            subject = pki.subject_of(self.cert)
            start, end = pki.validity(self.cert)
        except pki.PKIError as err:
            return f"the client certificate cannot be read: {err}"
        if now >= end.timestamp():
            return f'the client certificate of "{subject.user}" expired at {end.isoformat()}'
        if now < start.timestamp():
            return (
                f'the client certificate of "{subject.user}" is not valid before '
                f"{start.isoformat()} (is this machine's clock right?)"
            )
        return ""

    def __repr__(self) -> str:  # never print a key or token by accident
        return (
            f"Credentials(cert={'yes' if self.cert else 'no'}, "
            f"token={'yes' if self.token else 'no'})"
        )

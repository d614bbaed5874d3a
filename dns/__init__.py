"""kubelite's cluster DNS: <service>.<namespace>.svc.<cluster domain> names for every Service.

Who calls what (the process entry point is dns/main.py):

    records = ClusterRecords()                         # the informers feed it:
    records.apply(event)  /  records.upsert_service(obj), delete_service(obj),
                             upsert_endpoints(obj), delete_endpoints(obj)
    config = DnsConfig(listen_host=..., listen_port=53,
                       upstreams=upstreams_from_resolv_conf("/etc/resolv.conf"))
    server = DnsServer(records, config=config, metrics=DnsMetrics())
    await server.start(); ...; await server.stop()

    pod_resolv_conf(nameserver=<DNS ClusterIP>, namespace=<pod's>)   # for the kubelet

records.py keeps the view, zone.py answers names inside the cluster domain,
forward.py sends the rest upstream, server.py ties them to UDP and TCP.

NB: this package's name shadows dnspython's `dns` package for any code run
from the repository root; kubelite uses dnslib and must not depend on dnspython.
"""

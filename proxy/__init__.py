"""kubelite's proxy: programs each node's iptables so that Service addresses reach their Pods.

The pieces, and who calls what (the process entry point is proxy/main.py):

    state = ProxyState(clock=clock)                  # the informers feed it:
    state.apply(event)  /  state.upsert_service(obj), delete_service(obj),
                           upsert_endpoints(obj), delete_endpoints(obj)
    state.mark_listed("Service"); state.mark_listed("Endpoints")   # after initial lists
    runner = SyncRunner(state, IptablesCommand(), config=ProxyConfig(...), clock=clock,
                        metrics=ProxyMetrics(), conntrack=ConntrackCommand())
    await runner.run()                               # until cancelled
    await cleanup(IptablesCommand())                 # --cleanup: remove all we made

model.py parses API objects into values; rules.py renders them (a pure
function) into iptables-restore text; iptables.py is the seam to the kernel;
sync.py decides when to apply; conntrack.py forgets UDP flows to removed
endpoints; cleanup.py undoes everything; chains.py names what we own. See
each module's docstring for its invariants.
"""

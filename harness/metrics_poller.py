"""Polls a server's /metrics while requests run: the largest value seen of each name."""
import threading


class MetricsPoller:
    """with MetricsPoller(srv, ["kv_cache_used_bytes"]) as poll: ...; poll.peak[name] afterwards."""

    def __init__(self, srv, names, period_s=0.05):
        self.srv, self.names, self.period_s = srv, names, period_s
        self.peak = {name: 0.0 for name in names}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        while not self.stopped.is_set():
            try:
                now = self.srv.metrics(timeout=5)
            except Exception:  # noqa: BLE001 - a busy server answers the next poll
                now = {}
            self.observe(now)
            self.stopped.wait(self.period_s)

    def observe(self, now):
        """One poll's {name: value}; a subclass may keep something else from it."""
        for name in self.names:
            self.peak[name] = max(self.peak[name], now.get(name, 0.0))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

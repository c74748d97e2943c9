"""The end of a soak: clients run to completion, the server settles, every slot is erased."""
import threading
import time


def run_clients_then_erase(srv, client, n_clients, n_slots, settle_s=60.0):
    """Runs client(i) on a thread for each i in range(n_clients) until all return; waits until
    the server processes no request (a cancelled stream ends on the server's next step, up to
    settle_s); then erases every slot (the server needs --slot-save-path)."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + settle_s
    while srv.metrics().get("requests_processing", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    for slot in range(n_slots):
        srv.post(f"/slots/{slot}?action=erase", {})

"""Load client: N HTTP/1.1 GETs of one URL, on CONCURRENCY kept-alive connections
(each connection sends its share one request after the other), with the standard
library only (http.client), so the client is not the code under test. Every answer
must be 200 with a non-empty body. Prints one JSON line: {"n", "ok", "seconds" (the N
requests, connecting included), "first" (the first body), "statuses" (those not 200)}.

    python http_load.py http://HOST:PORT/PATH N [CONCURRENCY]
"""

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit


def main(url: str, n: int, concurrency: int = 1) -> int:
    parts = urlsplit(url)
    target = url[len(f"{parts.scheme}://{parts.netloc}"):] or "/"
    ok = 0
    first = None
    statuses: dict = {}
    lock = threading.Lock()

    def worker(count: int) -> None:
        nonlocal ok, first
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        for _ in range(count):
            conn.request("GET", target)
            resp = conn.getresponse()
            body = resp.read()
            with lock:
                if resp.status == 200 and body:
                    ok += 1
                    if first is None:
                        first = body.decode("utf-8", "replace")
                else:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
        conn.close()

    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(share,)) for share in shares]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    print(json.dumps({"n": n, "ok": ok, "seconds": seconds, "first": first, "statuses": statuses}))
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1))

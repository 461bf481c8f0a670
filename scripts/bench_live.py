"""Live writes under load: 8 search clients and one writer on loopback, then kill -9 of the server and a restart.

    .venv/bin/python scripts/bench_live.py [INDEX] [--clients 8] [--seconds 60] [--writes-per-second 10]

INDEX (default: the bundled sample, indexed first) is copied to a work folder, served by `simsearch serve`,
and searched by vector by ``--clients`` threads for ``--seconds`` without writes, then again while one writer
puts (a new photo upload), patches and deletes items at ``--writes-per-second``. After every acknowledged write a
checker times how long until searches show it (filter on a unique attribute). Then the server is killed with
SIGKILL and restarted: every acknowledged write must be there, nothing twice, and `simsearch verify` clean
after `simsearch compact`. Prints p50/p99 search latency of both phases and their ratio.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import queue
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import simsearch  # noqa: E402

SIMSEARCH = [sys.executable, "-m", "simsearch.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, (
            json.loads(data) if data and r.getheader("content-type", "").startswith("application/json") else data
        )
    finally:
        conn.close()


def post_json(port, path, obj):
    return request(port, "POST", path, json.dumps(obj), {"Content-Type": "application/json"})


def multipart(fields: dict, files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((96, 128, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def start_server(index: Path, port: int, extra: list[str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*SIMSEARCH, "serve", str(index), "--port", str(port), "--no-access-log", "-q", *(extra or [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(600):
        try:
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process ``pid`` so far, by thread id (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_report(name: str, before: dict[int, float], after: dict[int, float], seconds: float, requests: int) -> str:
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    top = sorted(used.items(), key=lambda kv: -kv[1])[:6]
    busiest = ", ".join(f"{t}: {c:.1f}" for t, c in top)
    total = sum(used.values())
    return (f"server CPU, {name}: {total:.1f} s in {seconds:g} s ({total / seconds:.2f} cores), "
            f"{1000 * total / max(requests, 1):.1f} ms per search; by thread id: {busiest}")  # fmt: skip


def search_load(port, vectors, clients, seconds, stop_early=None) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(seed):
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < end:
            body = json.dumps({"vector": vectors[rng.randrange(len(vectors))].tolist(), "k": 10})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                lat.append((time.perf_counter() - t0) * 1000)
                errors[0] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return {
        "requests": len(lat),
        "errors": errors[0],
        "p50": statistics.median(lat),
        "p99": lat[int(0.99 * len(lat)) - 1],
        "rps": len(lat) / seconds,
    }


DIM = [0]
POLL = 0.05  # seconds between the checker's searches: the lag is known to 50 ms
GIVE_UP = 5.0  # seconds after its acknowledgement a write counts as not seen


def checker(port, pending: queue.Queue, lags: list) -> None:
    """For each acknowledged put or patch, how long until searches show it (runs beside the writer).

    One poller for all of them, on one connection: every :data:`POLL` seconds while writes are waiting, one
    search filtered on the probes of all of them (each write sets a probe of its own) says which are visible; a
    write acknowledged while none waits is looked for at once. A write's lag is from its acknowledgement to the
    answer of the first search that shows it."""
    vector = [1.0] + [0.0] * (DIM[0] - 1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    waiting: dict[int, dict] = {}  # probe -> the write's log entry
    finished = False
    next_poll = 0.0
    while not finished or waiting:
        try:  # new acknowledgements: wait for one when none is waiting, else only until the next poll
            entry = pending.get(timeout=None if not waiting else max(0.0, next_poll - time.monotonic()))
            while True:
                if entry is None:
                    finished = True
                else:
                    waiting[entry["probe"]] = entry
                entry = pending.get_nowait()
        except queue.Empty:
            pass
        if not waiting:
            continue
        body = {"vector": vector, "k": len(waiting), "filter": {"probe": {"in": sorted(waiting)}}}
        next_poll = time.monotonic() + POLL
        conn.request("POST", "/search", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
        now = time.monotonic()
        for hit in data.get("results", []) if r.status == 200 else []:
            entry = waiting.pop(hit["attributes"].get("probe"), None)
            if entry is not None:
                entry["lag"] = now - entry["ack"]
                lags.append(entry["lag"])
        for probe, entry in list(waiting.items()):
            if now - entry["ack"] > GIVE_UP:
                entry["lag"] = None
                lags.append(None)
                del waiting[probe]
    conn.close()


WRITERS = 4  # writes in flight at most: the writer keeps its rate while a put waits for its photo's embedding


def writer(port, rate, seconds, log: list, pending: queue.Queue) -> None:
    """Puts (70 %), patches (20 %) and deletes (10 %) started at ``rate`` per second (open loop: a write does not
    wait for the previous one's acknowledgement, up to :data:`WRITERS` in flight); appends acknowledged writes to log.
    Patches and deletes pick an acknowledged key that no other write in flight is using."""
    rng = random.Random(7)
    live: list[str] = []  # acknowledged keys, not deleted
    busy: set[str] = set()  # keys with a write in flight
    lock = threading.Lock()

    def put(n: int, key: str) -> None:
        t0 = time.monotonic()
        body, ctype = multipart(
            {"attributes": json.dumps({"probe": n, "label": "live"})}, [("photo", "p.jpg", photo(n))]
        )
        status, _ = request(port, "PUT", f"/items/{key}", body, {"Content-Type": ctype})
        done("put", key, n, status, t0)

    def patch(n: int, key: str) -> None:
        t0 = time.monotonic()
        body = json.dumps({"attributes": {"probe": n}})
        status, _ = request(port, "PATCH", f"/items/{key}", body, {"Content-Type": "application/json"})
        done("patch", key, n, status, t0)

    def delete(n: int, key: str) -> None:
        t0 = time.monotonic()
        status, _ = request(port, "DELETE", f"/items/{key}")
        done("delete", key, None, status, t0)

    def done(kind: str, key: str, probe, status: int, started: float) -> None:
        now = time.monotonic()
        entry = {"kind": kind, "key": key, "probe": probe, "status": status, "ack": now, "took": now - started}
        with lock:
            busy.discard(key)
            if status == 200 and kind == "put":
                live.append(key)
            log.append(entry)
        if status == 200 and kind != "delete":
            pending.put(entry)

    n = 0
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    with ThreadPoolExecutor(WRITERS) as pool:
        while time.monotonic() < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0 / rate
            n += 1
            roll = rng.random()
            with lock:
                free = [k for k in live if k not in busy]
                if roll < 0.7 or len(free) < 3:
                    key, task = f"live-{n}", put
                elif roll < 0.9:
                    key, task = rng.choice(free), patch
                else:
                    key, task = free[rng.randrange(len(free))], delete
                    live.remove(key)
                busy.add(key)
            pool.submit(task, n, key)
    pending.put(None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", nargs="?", help="Index to copy and serve [default: the bundled sample].")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--writes-per-second", type=float, default=10)
    ap.add_argument(
        "--serve-option",
        action="append",
        default=[],
        help="extra `simsearch serve` options, e.g. "
        "--serve-option=--compact-seconds=600 (to see what folding the journal costs)",
    )
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench-live")
    args = ap.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    index = args.work / "index"
    if args.index:
        shutil.copytree(args.index, index, ignore=shutil.ignore_patterns(".lock"))
    else:
        simsearch.build_index([REPO / "simsearch" / "sample"], index).close()
    with simsearch.open_index(index) as idx:
        vectors = idx.vectors()[1][:2000]
        DIM[0] = idx.manifest.dim
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    print(f"CPU flags: {' '.join(f for f in flags if f.startswith(('avx2', 'avx512', 'amx')))}; "
          f"load {Path('/proc/loadavg').read_text().split()[:3]}")  # fmt: skip
    port = free_port()
    server = start_server(index, port, args.serve_option)
    try:
        search_load(port, vectors, args.clients, 3)  # warm up
        cpu0 = thread_cpu(server.pid)
        quiet = search_load(port, vectors, args.clients, args.seconds)
        cpu1 = thread_cpu(server.pid)
        log: list[dict] = []
        lags: list[float | None] = []
        pending: queue.Queue = queue.Queue()
        w = threading.Thread(target=writer, args=(port, args.writes_per_second, args.seconds, log, pending))
        check = threading.Thread(target=checker, args=(port, pending, lags))
        w.start()
        check.start()
        busy = search_load(port, vectors, args.clients, args.seconds)
        cpu2 = thread_cpu(server.pid)
        w.join()
        check.join()
        seen = sorted(x for x in lags if x is not None)
        failed_writes = sum(1 for e in log if e["status"] != 200)
        print("\n| phase | requests | req/s | p50 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, r in (("searches only", quiet), (f"with {args.writes_per_second:g} writes/s", busy)):
            print(f"| {name} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} |")
        print(f"\nserver pid {server.pid}, load {Path('/proc/loadavg').read_text().split()[:3]}")
        print(cpu_report("searches only", cpu0, cpu1, args.seconds, quiet["requests"]))
        print(cpu_report("with writes", cpu1, cpu2, args.seconds, busy["requests"]))
        print(f"\np99 with writes / without: {busy['p99'] / quiet['p99']:.2f} (goal <= 2)")
        print(f"writes: {len(log)} in {args.seconds:g} s = {len(log) / args.seconds:.1f}/s ({failed_writes} failed); puts and patches seen by searches: {len(seen)}/{len(lags)}, "
              f"lag after the acknowledgement p50 {statistics.median(seen) * 1000:.0f} ms, max {seen[-1] * 1000:.0f} ms, "
              f"{sum(1 for x in seen if x > 1.0)} over 1 s")  # fmt: skip
        took = sorted(e["took"] for e in log)
        print(f"write round trips (request to acknowledgement): p50 {statistics.median(took) * 1000:.0f} ms, "
              f"p99 {took[int(0.99 * len(took)) - 1] * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms")  # fmt: skip
        unseen = [e for e in log if e.get("kind") != "delete" and "lag" in e and e["lag"] is None]
        if unseen:  # a later write of the same key (a patch's new probe, a delete) can hide a write before it is seen
            superseded = sum(
                1
                for e in unseen
                if any(o["key"] == e["key"] and 0 < o["ack"] - e["ack"] < 5.0 and o["status"] == 200 for o in log)
            )
            print(f"not seen: {len(unseen)}, of which {superseded} were overwritten or deleted by a later write")
        # kill -9 and restart: every acknowledged write is there
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = start_server(index, port, args.serve_option)
        last: dict[str, dict] = {}
        for e in log:
            if e["status"] == 200:
                last[e["key"]] = e
        missing = wrong = 0
        for key, e in last.items():
            status, body = request(port, "GET", f"/items/{key}")
            if e["kind"] == "delete":
                missing += status != 404
            elif status != 200:
                missing += 1
            elif body.get("attributes", {}).get("probe") != e["probe"]:
                wrong += 1
        status, body = post_json(
            port, "/search", {"vector": [1.0] + [0.0] * (DIM[0] - 1), "k": 1000, "filter": {"label": "live"}}
        )
        keys = [h["key"] for h in body["results"]]
        print(f"after kill -9 and restart: {len(last)} keys checked, {missing} missing, {wrong} with stale attributes, "
              f"{len(keys) - len(set(keys))} duplicated")  # fmt: skip
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    subprocess.run([*SIMSEARCH, "compact", str(index)], check=True)
    v = subprocess.run([*SIMSEARCH, "verify", str(index)], capture_output=True, text=True)
    print(f"compact + verify: {v.stdout.strip() or v.stderr.strip()}")


if __name__ == "__main__":
    main()

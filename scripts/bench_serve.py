#!/usr/bin/env python3
"""Load benchmark of the HTTP service: `simsearch serve` on loopback, driven by concurrent keep-alive clients.

    .venv/bin/python scripts/bench_serve.py                         # the bundled sample (indexed first if needed)
    .venv/bin/python scripts/bench_serve.py indexes/caltech101      # e.g. after: simsearch index ../shared/data/caltech101/images --out indexes/caltech101
    .venv/bin/python scripts/bench_serve.py INDEX --clients 8 --seconds 30 --modes vector,similar,upload

Modes: ``vector`` (POST /search with JSON vectors: item embeddings plus noise, so never an exact item),
``similar`` (GET /items/{id}/similar), ``upload`` (POST /search with a multipart JPEG/PNG of an indexed photo, so
every request decodes and embeds an image). Each mode runs for a bounded time after a short warm-up, with a
bounded number of clients, against 127.0.0.1 only; the server is stopped at the end. Prints requests/s,
p50/p95/p99/max latency, errors and the server's CPU use, then checks the goal for by-vector search
(>= 500 req/s, p99 <= 50 ms, no errors) and compares upload throughput with the embedding speed of one image at
a time in this process (the ceiling for uploads).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only, always
GOAL_RPS, GOAL_P99_MS = 500, 50.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ensure_index(path: Path) -> Path:
    if (path / "manifest.json").exists():
        return path
    if path != REPO / "indexes" / "sample":
        sys.exit(f"no index at {path}: build it with `simsearch index FOLDER --out {path}`")
    print(f"indexing the bundled sample into {path} ...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "simsearch.cli", "index", str(REPO / "simsearch" / "sample"), "--out", str(path), "-q"],
        check=True,
    )
    return path


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), to show how busy the server was."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Server:
    def __init__(self, index: Path, port: int, extra: list[str]):
        cmd = [sys.executable, "-m", "simsearch.cli", "serve", str(index), "--host", HOST, "--port", str(port),
               "--no-access-log", "-q", *extra]  # fmt: skip
        self.port = port
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", "/info")
                resp = conn.getresponse()
                if resp.status == 200:
                    return json.loads(resp.read())
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit("the server did not start in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def multipart(name: str, data: bytes, fields: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def make_requests(index_path: Path, mode: str, k: int, n: int, seed: int) -> list[tuple[str, str, bytes, dict]]:
    """(method, path, body, headers) for ``n`` different requests of one mode."""
    import simsearch

    rng = np.random.default_rng(seed)
    with simsearch.open_index(index_path) as idx:
        ids = idx.ids()
        pick = rng.choice(ids, size=min(n, len(ids)), replace=False)
        if mode == "similar":
            return [("GET", f"/items/{int(i)}/similar?k={k}", b"", {}) for i in pick]
        if mode == "vector":
            _, vecs = idx.vectors(pick)
            vecs = vecs + rng.normal(0, 0.02, vecs.shape).astype(np.float32)
            return [
                ("POST", "/search", json.dumps({"vector": [round(float(x), 6) for x in v], "k": k}).encode(),
                 {"Content-Type": "application/json"})
                for v in vecs
            ]  # fmt: skip
        out = []
        for it in idx.items(int(i) for i in pick):
            body, ctype = multipart(Path(it.path).name, it.abspath.read_bytes(), {"k": str(k)})
            out.append(("POST", "/search", body, {"Content-Type": ctype}))
        return out


def run_mode(port: int, requests: list, clients: int, seconds: float, warmup: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    samples: list[str] = []
    start_measure = time.perf_counter() + warmup
    stop_at = start_measure + seconds

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        rnd = random.Random(n)
        while True:
            method, path, body, headers = requests[rnd.randrange(len(requests))]
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                conn.request(method, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                ok = resp.status == 200
                if not ok and len(samples) < 5:
                    samples.append(f"{resp.status} {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as e:
                ok = False
                if len(samples) < 5:
                    samples.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            t1 = time.perf_counter()
            if t0 >= start_measure:
                latencies[n].append(t1 - t0)
                errors[n] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = np.array([x for row in latencies for x in row]) * 1000
    count = len(lat)
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": count,
        "rps": count / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if count else float("nan"),
        "p95_ms": float(np.percentile(lat, 95)) if count else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if count else float("nan"),
        "max_ms": float(lat.max()) if count else float("nan"),
        "errors": sum(errors),
        "error_samples": samples,
    }


def embedding_ceiling(index_path: Path, n: int = 24) -> float:
    """Images per second when the service's own code embeds uploaded files one at a time, without HTTP (in a
    worker thread, as the server does): the ceiling for upload searches."""
    from simsearch.server import ServiceState

    state = ServiceState(index_path)
    state.preload()  # in the main thread, as the server does at startup
    result: list[float] = []

    def run() -> None:
        with state.index() as idx:
            files = [it.abspath.read_bytes() for it in idx.items(int(i) for i in idx.ids()[:n])]
            state.embed_image(idx, files[0])
            t0 = time.perf_counter()
            for data in files:
                state.embed_image(idx, data)
            result.append(len(files) / (time.perf_counter() - t0))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    state.close()
    return result[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("index", nargs="?", default=str(REPO / "indexes" / "sample"), help="index directory")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (1..64) [8]")
    ap.add_argument("--upload-clients", type=int, help="clients for the upload mode [same as --clients]")
    ap.add_argument("--seconds", type=float, default=30, help="measured seconds per mode (1..300) [30]")
    ap.add_argument("--warmup", type=float, default=3, help="unmeasured seconds before each mode [3]")
    ap.add_argument("--modes", default="vector,similar,upload", help="comma-separated: vector,similar,upload")
    ap.add_argument("-k", type=int, default=10, help="results per request [10]")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for `simsearch serve`")
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.seconds <= 300:
        ap.error("--clients must be 1..64 and --seconds 1..300 (the load is bounded)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - {"vector", "similar", "upload"}:
        ap.error(f"unknown mode in {args.modes}")

    index = ensure_index(Path(args.index).resolve())
    port = free_port()
    server = Server(index, port, args.server_arg)
    results: dict = {}
    try:
        info = server.wait_ready()
        print(
            f"index {index}: {info['count']} items, backbone {info['backbone']}, dim {info['dim']}, "
            f"FAISS {info['index_factory']}; server pid {server.proc.pid} on http://{HOST}:{port}; "
            f"{__import__('simsearch.system').system.cpu_count()} CPUs shared by server and clients",
            file=sys.stderr,
        )
        for mode in modes:
            reqs = make_requests(index, mode, args.k, 256 if mode != "upload" else 64, seed=len(mode))
            clients = args.upload_clients or args.clients if mode == "upload" else args.clients
            print(f"{mode}: {clients} clients x {args.seconds:g} s (+{args.warmup:g} s warm-up) ...", file=sys.stderr)
            cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
            r = run_mode(port, reqs, clients, args.seconds, args.warmup)
            cpu1, t1 = cpu_seconds(server.proc.pid), time.perf_counter()
            r["server_cpu_cores"] = (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
            results[mode] = r
    finally:
        server.stop()
    if "upload" in modes:
        results["embedding_ceiling_img_s"] = embedding_ceiling(index)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    header = f"{'mode':8} {'clients':>7} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
    header += f"{'max ms':>8} {'errors':>6} {'server CPU':>10}"
    print(header)
    for mode in modes:
        r = results[mode]
        cpu = f"{r['server_cpu_cores']:.2f} cores" if r["server_cpu_cores"] is not None else "?"
        print(f"{mode:8} {r['clients']:>7} {r['requests']:>9} {r['rps']:>8.1f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>6} {cpu:>10}")  # fmt: skip
        for s in r["error_samples"]:
            print(f"  error: {s}")
    status = 0
    if "vector" in results:
        r = results["vector"]
        ok = r["rps"] >= GOAL_RPS and r["p99_ms"] <= GOAL_P99_MS and r["errors"] == 0
        print(
            f"by-vector goal (>= {GOAL_RPS} req/s, p99 <= {GOAL_P99_MS:g} ms, 0 errors): {'met' if ok else 'NOT met'}"
        )
        status = 0 if ok else 1
    if "upload" in results:
        r, ceiling = results["upload"], results["embedding_ceiling_img_s"]
        print(
            f"upload: {r['rps']:.1f} req/s vs. {ceiling:.1f} img/s embedding one upload at a time without HTTP "
            f"({r['rps'] / ceiling:.0%} of that ceiling), {r['errors']} errors"
        )
        status = status or (1 if r["errors"] else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())

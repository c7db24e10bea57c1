"""p2c-serve under concurrent clients, on loopback: requests/s, p50 / p99 latency and the 503s
at 1, 16 and 50 clients (1: one request at a time, the baseline), optionally beside slow
clients.

    python bench/serve.py [--seconds 40] [--clients 1 16 50] [--slow_clients 0] [--ngf 32]
                          [--whole_photo] [-- SERVER FLAGS...]

Starts the real ``p2c-serve`` command (uvicorn, 127.0.0.1, a free port) on a random light
generator (speed does not depend on the values) with the default backends (dlib, GrabCut),
waits for its start-up compilation, then for each client count runs that many closed-loop
clients for ``--seconds`` each, every one posting photos in turn: variations of scikit-image's
astronaut and the original's test photo (tests/data/images/) at half size, as JPEGs. A client
answered 503 waits the ``Retry-After`` seconds. ``--slow_clients N`` adds N clients that send
their headers, then the body at 1 byte/s until the server answers (408 past
``--body_timeout``), and start again. The server keeps its ``--max_pending`` (32); its
connection caps are raised to fit every client, all from one address. The server's
``/healthz`` counters give the faces per device call. Only loopback traffic; every loop is
bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import socket
import subprocess
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TEST_PHOTO = ROOT / "tests" / "data" / "images" / "photo_test.jpg"
HOST = "127.0.0.1"


def photos(count: int) -> list[bytes]:
    """``count`` JPEGs, each face-bearing and a little different."""
    from skimage import data

    big = np.asarray(Image.open(TEST_PHOTO).convert("RGB"))
    srcs = [
        data.astronaut(),
        cv2.resize(big, (big.shape[1] // 2, big.shape[0] // 2), cv2.INTER_AREA),
    ]
    out = []
    for i in range(count):
        rng = np.random.default_rng(i)
        img = srcs[i % len(srcs)]
        img = img[:, ::-1] if i % 2 else img
        img = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15), 0, 255)
        buf = BytesIO()
        Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def multipart(image: bytes, whole_photo: bool) -> tuple[bytes, str]:
    boundary = "p2cbenchboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="whole_photo"\r\n\r\n'
        f"{'true' if whole_photo else 'false'}\r\n".encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode(),
        image,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def slow_client(
    port: int, form: tuple[bytes, str], end: float, answers: list[str], lock: threading.Lock
) -> None:
    """Uploads ``form`` at 1 byte/s until ``end``: each answer's status (or how the connection
    ended)."""
    body, ctype = form
    head = (
        f"POST /v1/cartoonize HTTP/1.1\r\nHost: bench\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    while time.perf_counter() < end:
        answer = "open at the end"
        try:
            with socket.create_connection((HOST, port), timeout=10) as s:
                s.sendall(head)
                s.settimeout(1.0)  # the pace: a byte, then up to 1 s for an answer
                for i in range(len(body)):
                    if time.perf_counter() >= end:
                        break
                    s.send(body[i : i + 1])
                    try:
                        data = s.recv(65536)
                    except TimeoutError:
                        continue
                    answer = data.split(b" ", 2)[1].decode() if data else "closed"
                    break
        except OSError as e:
            answer = type(e).__name__
            time.sleep(0.5)
        with lock:
            answers.append(answer)


def level(
    port: int, bodies: list[tuple[bytes, str]], clients: int, seconds: float, slow: int = 0
) -> dict:
    """``clients`` closed-loop clients for ``seconds`` (beside ``slow`` slow ones): latencies
    of the requests that started in the window (each bounded by a 300 s timeout), the 503s
    and other errors, the slow clients' answers."""
    latencies: list[float] = []
    errors: list[str] = []
    answers: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    end = start + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=300)
        i = k
        while time.perf_counter() < end:
            body, ctype = bodies[i % len(bodies)]
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/cartoonize", body, {"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
                err = f"{r.status}"
                if r.status == 503:  # as a client should: wait as told
                    wait = float(r.getheader("Retry-After", "1"))
                    time.sleep(max(0.0, min(wait, end - time.perf_counter())))
            except OSError as e:
                ok, err = False, type(e).__name__
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=300)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors.append(err)
        conn.close()

    before = get_json(port, "/healthz")
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    threads += [
        threading.Thread(
            target=slow_client, args=(port, bodies[k % len(bodies)], end, answers, lock)
        )
        for k in range(slow)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    after = get_json(port, "/healthz")
    lat = np.array(latencies)
    calls = after["device_calls"] - before["device_calls"]
    return {
        "clients": clients,
        "slow": slow,
        "requests": len(latencies),
        "503": errors.count("503"),
        "errors": len(errors) - errors.count("503"),
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(lat, 50)) if len(lat) else math.nan,
        "p99": float(np.percentile(lat, 99)) if len(lat) else math.nan,
        "faces_per_call": (after["device_images"] - before["device_images"]) / max(1, calls),
        "slow_answers": {a: answers.count(a) for a in sorted(set(answers))},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=40, help="per client count")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 50])
    p.add_argument("--slow_clients", type=int, default=0, help="1 byte/s uploads beside them")
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--photos", type=int, default=16)
    p.add_argument("--whole_photo", action="store_true", help="whole-photo requests")
    p.add_argument("server", nargs="*", help="more p2c-serve flags, after --")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from flax import nnx

    from p2c_jax.nn.models import NetSpec, build
    from p2c_jax.weights.checkpoint import save_nets

    bodies = [multipart(b, args.whole_photo) for b in photos(args.photos)]
    with tempfile.TemporaryDirectory() as tmp:
        spec = NetSpec("generator", args.ngf, img_size=256)
        save_nets(Path(tmp) / "weights", {"genA2B": (spec, nnx.state(build(spec)))})
        port = free_port()
        most = max(args.clients) + args.slow_clients + 8  # connections: room for every client
        cmd = [
            sys.executable,
            "-c",
            "import sys; from p2c_jax.cli.serve import main; sys.exit(main())",
            "--weights",
            str(Path(tmp) / "weights"),
            "--host",
            HOST,
            "--port",
            str(port),
            "--max_connections",
            str(most),
            "--max_per_client",
            str(most),
            *args.server,
        ]
        log = open(Path(tmp) / "server.log", "w+")  # noqa: SIM115 - closed below
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            t = time.perf_counter()
            deadline = t + 600
            while True:
                if server.poll() is not None or time.perf_counter() > deadline:
                    log.seek(0)
                    sys.exit(f"p2c-serve did not start:\n{log.read()[-3000:]}")
                try:
                    health = get_json(port, "/healthz")
                    break
                except OSError:
                    time.sleep(0.5)
            print(
                f"p2c-serve up in {time.perf_counter() - t:.0f} s (batch sizes "
                f"{health['batch_sizes']}); {args.seconds:g} s per level",
                file=sys.stderr,
            )
            level(port, bodies, 1, min(10.0, args.seconds))  # warm-up: first calls of each path
            rows = []
            for clients in args.clients:
                rows.append(level(port, bodies, clients, args.seconds, args.slow_clients))
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    base = rows[0]["rps"] if rows and rows[0]["clients"] == 1 else math.nan
    print(
        "| clients | slow clients | requests | 503 | other errors | requests/s | vs 1 client "
        "| p50 s | p99 s | faces/call | slow clients' answers |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        slow = ", ".join(f"{k}: {v}" for k, v in r["slow_answers"].items()) or "-"
        print(
            f"| {r['clients']} | {r['slow']} | {r['requests']} | {r['503']} | {r['errors']} "
            f"| {r['rps']:.2f} | {r['rps'] / base:.2f}x | {r['p50']:.2f} | {r['p99']:.2f} "
            f"| {r['faces_per_call']:.2f} | {slow} |"
        )


if __name__ == "__main__":
    main()

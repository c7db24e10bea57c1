"""p2c-serve under concurrent clients, on loopback: requests/s and p50 / p95 latency at 1, 4
and 16 clients (1: one request at a time, the baseline).

    python bench/serve.py [--seconds 40] [--clients 1 4 16] [--ngf 32] [--whole_photo]
                          [-- SERVER FLAGS...]

Starts the real ``p2c-serve`` command (uvicorn, 127.0.0.1, a free port) on a random light
generator (speed does not depend on the values) with the default backends (dlib, GrabCut),
waits for its start-up compilation, then for each client count runs that many closed-loop
clients for ``--seconds`` each, every one posting photos in turn: variations of scikit-image's
astronaut and the original's test photo (tests/data/images/) at half size, as JPEGs. The
server's ``/healthz`` counters give the faces per device call. Only loopback traffic; every
loop is bounded in time.
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


def level(port: int, bodies: list[tuple[bytes, str]], clients: int, seconds: float) -> dict:
    """``clients`` closed-loop clients for ``seconds``: latencies of the requests that
    started in the window (each bounded by a 300 s timeout), and the errors."""
    latencies: list[float] = []
    errors: list[str] = []
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
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(lat, 50)) if len(lat) else math.nan,
        "p95": float(np.percentile(lat, 95)) if len(lat) else math.nan,
        "faces_per_call": (after["device_images"] - before["device_images"]) / max(1, calls),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=40, help="per client count")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
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
            "--max_pending",
            str(max(64, 2 * max(args.clients))),
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
                rows.append(level(port, bodies, clients, args.seconds))
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    base = rows[0]["rps"] if rows and rows[0]["clients"] == 1 else math.nan
    print("| clients | requests | errors | requests/s | vs 1 client | p50 s | p95 s | faces/call |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']:.2f} "
            f"| {r['rps'] / base:.2f}x | {r['p50']:.2f} | {r['p95']:.2f} "
            f"| {r['faces_per_call']:.2f} |"
        )


if __name__ == "__main__":
    main()

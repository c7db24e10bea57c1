"""The generator behind a web page and an HTTP API: ``p2c-serve --weights WEIGHTS``.

``/``: the page; ``POST /v1/cartoonize``: multipart field ``file`` (options ``whole_photo``,
``side_by_side``) -> PNG; ``GET /healthz``. See docs/serving.md. Exit status 2 when the weights
or a preprocessing backend are unusable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial

from p2c_jax.cli.common import (
    add_compile_cache_flag,
    add_img_size_flag,
    add_precision_flag,
    setup_logging,
    unusable_weights,
    use_compile_cache,
)
from preprocessing.extras import MissingExtraError, needs

NET = "genA2B"


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.flags import Parser, add_backend_flags, number

    p = Parser(prog="p2c-serve", description=__doc__.split("\n")[0])
    p.add_argument(
        "--weights",
        required=True,
        help="the original photo2cartoon_weights.pt, our checkpoint directory or a "
        "training workdir (its newest step that restores)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    p.add_argument(
        "--port",
        type=number(int, minimum=0, maximum=65535),
        default=8000,
        help="port (%(default)s; 0: any free one)",
    )
    p.add_argument(
        "--max_upload_mb",
        type=number(float, above=0),
        default=20,
        help="largest upload, MB (%(default)s)",
    )
    p.add_argument(
        "--max_pixels",
        type=number(int, minimum=1),
        default=50_000_000,
        help="largest image, width x height, checked before decoding (%(default)s)",
    )
    add_precision_flag(p)
    add_img_size_flag(p)
    p.add_argument(
        "--batch_size",
        type=number(int, minimum=1),
        default=None,
        help="most faces per forward pass; batch sizes 1, 2, 4, ... up to it are compiled at "
        "start-up (default: 8 per accelerator, 4 on CPU)",
    )
    p.add_argument(
        "--max_wait_ms",
        type=number(float, minimum=0),
        default=10,
        help="how long a face waits for others to share its batch (%(default)s ms)",
    )
    p.add_argument(
        "--max_pending",
        type=number(int, minimum=1),
        default=32,
        help="requests in progress at once, counted once their body has arrived; more are "
        "answered 503 (%(default)s)",
    )
    p.add_argument(
        "--body_timeout",
        type=number(float, above=0),
        default=60,
        help="seconds to receive a request's body; later: 408 (%(default)s)",
    )
    p.add_argument(
        "--header_timeout",
        type=number(float, above=0),
        default=10,
        help="seconds to receive a request's line and headers; later the connection is "
        "closed (%(default)s)",
    )
    p.add_argument(
        "--keep_alive",
        type=number(float, above=0),
        default=5,
        help="seconds an idle connection is kept open (%(default)s)",
    )
    p.add_argument(
        "--max_connections",
        type=number(int, minimum=1),
        default=64,
        help="open connections; a request beyond them is answered 503 (%(default)s)",
    )
    p.add_argument(
        "--max_per_client",
        type=number(int, minimum=1),
        default=16,
        help="open connections from one client address; more are answered 429 (%(default)s)",
    )
    p.add_argument(
        "--workers",
        type=number(int, minimum=1),
        default=min(4, os.cpu_count() or 1),
        help="decoding/preprocessing threads (%(default)s)",
    )
    p.add_argument(
        "--max_faces",
        type=number(int, minimum=1),
        default=10,
        help="whole_photo: most faces (%(default)s)",
    )
    p.add_argument(
        "--min_face",
        type=number(float, minimum=0),
        default=40,
        help="whole_photo: smallest face in pixels (%(default)s)",
    )
    add_backend_flags(p)
    add_compile_cache_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    use_compile_cache(args.compile_cache)
    handler = logging.StreamHandler()  # the root logger may be configured by an import
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    log = logging.getLogger("p2c_jax.serve")
    log.handlers[:] = [handler]  # one, on this call's stderr
    log.setLevel(logging.INFO)
    log.propagate = False

    try:  # the serve extra, before the weights load
        with needs("serve", "p2c-serve"):
            import uvicorn

            from p2c_jax.serve.app import Limits, create_app
            from p2c_jax.serve.connections import ConnectionLimits, uvicorn_config
    except MissingExtraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax

    from p2c_jax.inference import load_generator
    from p2c_jax.parallel import uses_cpu_forms
    from p2c_jax.serve.batcher import Buckets
    from preprocessing.flags import preprocessor_from_flags

    log.info("loading %s", args.weights)
    try:
        gen = load_generator(args.weights, NET, args.precision, args.img_size)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways
        print(unusable_weights(args.weights, e), file=sys.stderr)
        return 2
    per_device = 4 if uses_cpu_forms(jax.local_devices()) else 8
    engine = Buckets(gen, args.batch_size or per_device * len(jax.local_devices()))
    make = partial(preprocessor_from_flags, args, all_faces=True)
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_pending=args.max_pending,
        body_timeout=args.body_timeout,
        max_faces=args.max_faces,
        min_face=args.min_face,
    )
    app = create_app(engine, make, limits, workers=args.workers, max_wait_s=args.max_wait_ms / 1000)
    try:
        make()
    except Exception as e:  # noqa: BLE001 - a missing backend or model file
        print(
            f"error: preprocessing backend unusable ({type(e).__name__}: {e}); install "
            "pip install -e '.[preprocess]'",
            file=sys.stderr,
        )
        return 2
    log.info("compiling the generator for batches of %s", ", ".join(map(str, engine.sizes)))
    app.state.server.setup()  # compiled before the server listens
    connections = ConnectionLimits(
        header_timeout=args.header_timeout,
        keep_alive=args.keep_alive,
        max_connections=args.max_connections,
        max_per_client=args.max_per_client,
    )
    uvicorn.Server(uvicorn_config(app, args.host, args.port, connections, log_level="info")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

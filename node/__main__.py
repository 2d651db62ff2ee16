"""`python -m node --device NAME --port PORT [--host 0.0.0.0] [--log-level info] [--cuda]`."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from node.server import NodeServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node", description="testbed device node (gRPC)")
    ap.add_argument("--device", required=True, help="device name (as in devices.yaml)")
    ap.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    ap.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--cuda", action="store_true", help="use the CUDA provider when onnxruntime has it")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format=f"%(asctime)s {args.device} %(name)s %(levelname)s %(message)s",
    )
    # Links given at start (the Docker testbed): shape them before serving; a tc error stops here.
    from node import shaping, tc

    try:
        shaping.shape_from_env()
    except (tc.TcError, ValueError) as e:
        msg = f"node {args.device}: link shaping failed, not starting: {e}"
        logging.getLogger("node").error(msg)
        print(msg, flush=True)
        return 3
    node = NodeServer(args.device, args.port, args.host, use_cuda=args.cuda).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    msg = f"node {args.device} listening on {args.host}:{node.port}"
    logging.getLogger("node").info(msg)
    print(msg, flush=True)
    while not stop.wait(1.0):
        pass
    logging.getLogger("node").info("node %s stopping", args.device)
    node.stop(grace_s=1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

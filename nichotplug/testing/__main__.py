"""``python -m nichotplug.testing``: serve an in-process API server until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

from nichotplug.testing.server import ApiServer


async def _serve(port: int, kubeconfig: Path | None) -> None:
    server = ApiServer(port=port)
    await server.start()
    path = server.write_kubeconfig(kubeconfig or Path(tempfile.mkdtemp(prefix="nichotplug-kube-")) / "kubeconfig")
    print(path, flush=True)
    print(f"serving {server.url}; export KUBECONFIG={path}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nichotplug.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--kubeconfig", type=Path, help="where to write the admin kubeconfig")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.kubeconfig))
    return 0


if __name__ == "__main__":
    sys.exit(main())

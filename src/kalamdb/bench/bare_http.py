"""A bare aiohttp + uvloop JSON endpoint: the HTTP ceiling that single-node figures are compared to.

    python -m kalamdb.bench.bare_http --port-file /tmp/port

Answers `POST /v1/api/sql` with a fixed success body after parsing the JSON request: no auth, no
SQL, no disk. Measured in the same run as the real server, the ratio of the two says how much
the database costs on top of HTTP, whatever the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import orjson
from aiohttp import web

ANSWER = orjson.dumps({"status": "success", "results": [{"row_count": 1, "message": "Inserted 1 row(s)"}],
                       "took": 0.01})


async def handle(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=ANSWER, content_type="application/json")


def publish_port(port_file: str, port: int) -> None:
    tmp = port_file + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(port))
    os.replace(tmp, port_file)


async def serve(port_file: str) -> None:
    app = web.Application()
    app.router.add_post("/v1/api/sql", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    publish_port(port_file, runner.addresses[0][1])
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port_file))


if __name__ == "__main__":
    main()

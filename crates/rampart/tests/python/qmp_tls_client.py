"""Drives rampart's TLS monitor with QEMU's own Python QMP client over an SSL context.

Usage: qmp_tls_client.py ROLE PORT CA CERT KEY
ROLE: admin (may run everything), dashboard (query-* only) or denied (no session at all).
Prints "qmp_tls_client: ok" when every check passed; raises (exit 1) otherwise.

The process exits without qemu.qmp's disconnect(): on an SSL stream it never returns (its
writer.drain() waits forever — the same happens against QEMU 10's own TLS monitor), and the
monitor serves one client at a time; exiting closes the socket.
"""

import asyncio
import os
import ssl
import sys

from qemu.qmp import ExecuteError, QMPClient


async def main(role, port, ca, cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    qmp = QMPClient(role)
    addr = ("127.0.0.1", port)
    if role == "denied":
        try:
            await asyncio.wait_for(qmp.connect(addr, ssl=ctx), timeout=20)
        except Exception as err:  # the connection closes before any greeting
            print("qmp_tls_client: refused:", type(err).__name__, err, flush=True)
            return
        raise AssertionError("a denied certificate got a session")

    await qmp.connect(addr, ssl=ctx)
    assert qmp.greeting is not None
    status = await qmp.execute("query-status")
    assert status == {"running": True, "status": "running"}, status
    if role == "admin":
        await qmp.execute("stop")
        status = await qmp.execute("query-status")
        assert status["status"] == "paused", status
        await qmp.execute("cont")
    else:
        try:
            await qmp.execute("stop")
            raise AssertionError("stop was allowed for the read-only role")
        except ExecuteError as err:
            assert err.error_class == "PermissionDenied", err.error_class
        status = await qmp.execute("query-status")
        assert status["status"] == "running", status


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], int(a[1]), a[2], a[3], a[4]))
    print("qmp_tls_client: ok", flush=True)
    sys.stdout.flush()
    os._exit(0)

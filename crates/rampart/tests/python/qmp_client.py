"""Drives rampart with QEMU's own Python QMP client (`qemu.qmp`), as management tools do.

Usage: qmp_client.py SOCKET   (rampart running a test guest with -qmp unix:SOCKET,...)
Prints "qmp_client: ok" when every check passed; raises (exit 1) otherwise.
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient


async def expect_event(listener, name):
    while True:
        event = await asyncio.wait_for(listener.get(), timeout=30)
        if event["event"] == name:
            return event


async def main(path):
    qmp = QMPClient("rampart-test")
    await qmp.connect(path)
    greeting = qmp.greeting
    assert greeting is not None
    print("qmp_client: greeting", greeting._raw, flush=True)

    status = await qmp.execute("query-status")
    assert status == {"running": True, "status": "running"}, status
    version = await qmp.execute("query-version")
    assert "package" in version and "qemu" in version, version
    names = [c["name"] for c in await qmp.execute("query-commands")]
    schema = await qmp.execute("query-qmp-schema")
    assert names == [e["name"] for e in schema if e["meta-type"] == "command"], names

    for cmd, args, klass in [
        ("frobnicate", None, "CommandNotFound"),
        ("query-status", {"bogus": 1}, "GenericError"),
        ("human-monitor-command", {}, "GenericError"),
    ]:
        try:
            await qmp.execute(cmd, args)
        except ExecuteError as err:
            assert err.error_class == klass, (cmd, err.error_class)
        else:
            raise AssertionError(f"{cmd} {args} did not fail")

    with qmp.listener() as listener:
        assert await qmp.execute("stop") == {}
        event = await expect_event(listener, "STOP")
        assert "timestamp" in event, event
        assert (await qmp.execute("query-status"))["status"] == "paused"
        assert await qmp.execute("cont") == {}
        await expect_event(listener, "RESUME")

        out = await qmp.execute("human-monitor-command", {"command-line": "info status"})
        assert out == "VM status: running\r\n", out

        assert await qmp.execute("system_reset") == {}
        event = await expect_event(listener, "RESET")
        assert event["data"] == {"guest": False, "reason": "host-qmp-system-reset"}, event

        assert await qmp.execute("quit") == {}
        event = await expect_event(listener, "SHUTDOWN")
        assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}, event
    await qmp.disconnect()
    print("qmp_client: ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

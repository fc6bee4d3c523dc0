"""Passes file descriptors to rampart with QEMU's own Python QMP client (`qemu.qmp`'s
`send_fd_scm`, which sends a lone space carrying the descriptor, then the command).

Usage: fd_client.py SOCKET IMAGE   (rampart running a test guest with -qmp unix:SOCKET,...)
Prints "fd_client: ok" when every check passed; raises (exit 1) otherwise.
"""

import asyncio
import os
import sys

from qemu.qmp import ExecuteError, QMPClient


async def main(path, image):
    qmp = QMPClient("rampart-fd-test")
    await qmp.connect(path)

    fd = os.open(image, os.O_RDONLY)
    qmp.send_fd_scm(fd)
    assert await qmp.execute("getfd", {"fdname": "py"}) == {}
    assert await qmp.execute("closefd", {"fdname": "py"}) == {}
    try:
        await qmp.execute("closefd", {"fdname": "py"})
    except ExecuteError as err:
        assert err.error_class == "GenericError", err
        assert "File descriptor named 'py' not found" in str(err), err
    else:
        raise AssertionError("closefd of a closed name did not fail")

    qmp.send_fd_scm(fd)
    info = await qmp.execute("add-fd", {"fdset-id": 3, "opaque": "py-image"})
    assert info["fdset-id"] == 3, info
    sets = await qmp.execute("query-fdsets")
    assert sets == [{"fdset-id": 3, "fds": [{"fd": info["fd"], "opaque": "py-image"}]}], sets

    args = {
        "driver": "raw",
        "node-name": "py0",
        "read-only": True,
        "file": {"driver": "file", "filename": "/dev/fdset/3"},
    }
    assert await qmp.execute("blockdev-add", args) == {}
    nodes = await qmp.execute("query-named-block-nodes")
    assert [n["node-name"] for n in nodes] == ["py0"], nodes
    assert nodes[0]["file"] == "/dev/fdset/3" and nodes[0]["ro"] is True, nodes
    assert nodes[0]["image"]["virtual-size"] == os.path.getsize(image), nodes
    assert await qmp.execute("blockdev-del", {"node-name": "py0"}) == {}
    assert await qmp.execute("remove-fd", {"fdset-id": 3}) == {}
    assert await qmp.execute("query-fdsets") == []
    os.close(fd)

    await qmp.disconnect()
    print("fd_client: ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

#!/usr/bin/python3
"""The independent pymodbus peer of testdata/peers/modbus_server.py (same
units, same request record), listening on a given address instead of
127.0.0.1: the isolation test runs it inside a network namespace, on the
control subnet's test address. Usage: pymodbus_at.py HOST PORT PEERS_DIR

Prints "LISTENING <port>" once ready, then one JSON line per request.
Stops on SIGTERM or when stdin closes.
"""

import asyncio
import logging
import signal
import sys

sys.path.insert(0, sys.argv[3])
import modbus_server as peer  # noqa: E402  (the shared peer's units and recorder)

from pymodbus.datastore import ModbusServerContext  # noqa: E402
from pymodbus.device import ModbusDeviceIdentification  # noqa: E402
from pymodbus.server.async_io import ModbusTcpServer  # noqa: E402


async def main(host, port):
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    context = ModbusServerContext(slaves={1: peer.dense_unit(), 2: peer.sparse_unit()}, single=False)
    identity = ModbusDeviceIdentification(info_name={"VendorName": "pymodbus", "ProductName": "pymodbus peer"})
    server = ModbusTcpServer(context, identity=identity, address=(host, port), handler=peer.RecordingHandler)
    task = asyncio.ensure_future(server.serve_forever())
    await server.serving
    print("LISTENING %d" % server.server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_reader(sys.stdin, lambda: sys.stdin.read(1) or stop.done() or stop.set_result(None))
    await stop
    await server.server_close()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

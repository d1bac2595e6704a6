#!/usr/bin/python3
"""An independent Modbus TCP peer for the modbus driver's tests, built on
pymodbus (Debian's python3-pymodbus 3.0.0; run with /usr/bin/python3).

It listens on 127.0.0.1 (port 0 unless given), prints "LISTENING <port>"
once ready, then one JSON line per request it receives -- every request,
writes included, before it is executed -- so a test can assert that only
reads arrived. Units:

  1  dense map: holding and input registers 0-199, coils and discrete
     inputs 0-63, known values (see below), device identification.
  2  sparse map: holding registers 0-9 and 20-29 only; any read touching
     10-19 answers exception 2 (illegal data address), like a meter with
     unmapped ranges.

Stops on SIGTERM or when stdin closes.
"""

import asyncio
import json
import logging
import signal
import struct
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
    ModbusSparseDataBlock,
)
from pymodbus.device import ModbusDeviceIdentification
from pymodbus.server.async_io import ModbusConnectedRequestHandler, ModbusTcpServer


def float32_words(v):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def dense_unit():
    hr = [0] * 200
    hr[0:2] = float32_words(21.5)           # hr/0/float32
    hr[2:4] = float32_words(-3.25)[::-1]     # hr/2/float32, order CDAB
    hr[4] = 0xFFF6                           # hr/4/int16 = -10
    hr[5] = 1234                             # hr/5/uint16, scale 0.1 -> 123.4
    hr[6:8] = [0x0001, 0x86A0]               # hr/6/uint32 = 100000
    hr[8] = 0b0000_0000_1010_0101            # bits
    hr[100:102] = float32_words(50.0)        # far away: a second block
    ir = [0] * 200
    ir[0:2] = float32_words(230.1)
    ir[10] = 42
    co = [False] * 64
    co[3] = True
    di = [False] * 64
    di[7] = True
    return ModbusSlaveContext(
        hr=ModbusSequentialDataBlock(0, hr),
        ir=ModbusSequentialDataBlock(0, ir),
        co=ModbusSequentialDataBlock(0, co),
        di=ModbusSequentialDataBlock(0, di),
        zero_mode=True,
    )


def sparse_unit():
    regs = {a: a for a in list(range(0, 10)) + list(range(20, 30))}
    return ModbusSlaveContext(
        hr=ModbusSparseDataBlock(regs),
        ir=ModbusSparseDataBlock({0: 0}),
        co=ModbusSparseDataBlock({0: 0}),
        di=ModbusSparseDataBlock({0: 0}),
        zero_mode=True,
    )


class RecordingHandler(ModbusConnectedRequestHandler):
    """Prints every decoded request before executing it."""

    def execute(self, request, *addr):
        rec = {"unit": request.unit_id, "fc": request.function_code}
        for attr in ("address", "count", "read_code", "object_id"):
            val = getattr(request, attr, None)
            if isinstance(val, int):
                rec[attr] = val
        mei = getattr(request, "sub_function_code", None)
        if isinstance(mei, int):
            rec["mei"] = mei
        print(json.dumps(rec), flush=True)
        return super().execute(request, *addr)


async def main():
    # pymodbus logs every client disconnect and exception answer as an
    # error; the test only wants the request record.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    context = ModbusServerContext(slaves={1: dense_unit(), 2: sparse_unit()}, single=False)
    identity = ModbusDeviceIdentification(
        info_name={
            "VendorName": "pymodbus",
            "ProductCode": "PM",
            "VendorUrl": "https://github.com/pymodbus-dev/pymodbus",
            "ProductName": "pymodbus peer",
            "ModelName": "sightglass test peer",
            "MajorMinorRevision": "3.0.0",
        }
    )
    server = ModbusTcpServer(
        context, identity=identity, address=("127.0.0.1", port), handler=RecordingHandler
    )
    task = asyncio.ensure_future(server.serve_forever())
    await server.serving
    print("LISTENING %d" % server.server.sockets[0].getsockname()[1], flush=True)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    # The test closing our stdin (or dying) stops us too.
    loop.add_reader(sys.stdin, lambda: sys.stdin.read(1) or stop.done() or stop.set_result(None))
    await stop
    await server.server_close()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())

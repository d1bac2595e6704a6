// An OPC UA server written with node-opcua (someone else's stack) that
// Sightglass's OPC UA driver tests talk to. It serves a small building on
// 127.0.0.1 only (or --host, which only the namespace test gives, for an
// address inside the network namespace it made), with changing values, a folder tree, engineering units
// and history on Plant.ChilledWaterSupplyTemp, and it prints every service
// request it receives as "SERVICE <name>" on stdout so a test can assert
// that only reads arrived.
//
// Usage: node opcua_server.js --port N --pki DIR [--host IP] [--max-nodes-per-read N]
//        [--zones N] [--steady] [--exit-with-stdin]
// --steady adds Plant.ChillerSetpoint, a value set once at start and never
// again, so its source timestamp stays at the start (as on many servers).
// It prints "READY <port> <endpoint>" once it listens. Users: anonymous,
// username "reader" with password "secret", or any X.509 user certificate
// (accepted on first sight, like the client certificates).
"use strict";

const path = require("path");
const {
  OPCUAServer,
  OPCUACertificateManager,
  Variant,
  DataType,
  StatusCodes,
  MessageSecurityMode,
  SecurityPolicy,
  standardUnits,
} = require("node-opcua");

function arg(name, def) {
  const i = process.argv.indexOf("--" + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

const port = parseInt(arg("port", "0"), 10);
const host = arg("host", "127.0.0.1");
const pki = arg("pki", path.join(__dirname, ".opcua-pki"));
const maxNodesPerRead = parseInt(arg("max-nodes-per-read", "50"), 10);
const zones = parseInt(arg("zones", "4"), 10);

function out(line) {
  process.stdout.write(line + "\n");
}

async function main() {
  const serverCertificateManager = new OPCUACertificateManager({
    rootFolder: path.join(pki, "server"),
    automaticallyAcceptUnknownCertificate: true,
  });
  const userCertificateManager = new OPCUACertificateManager({
    rootFolder: path.join(pki, "user"),
    automaticallyAcceptUnknownCertificate: true,
  });
  await serverCertificateManager.initialize();
  await userCertificateManager.initialize();

  const server = new OPCUAServer({
    host, // without it node-opcua listens on every interface
    hostname: host,
    port,
    serverCertificateManager,
    userCertificateManager,
    securityPolicies: [
      SecurityPolicy.None,
      SecurityPolicy.Basic256Sha256,
      SecurityPolicy.Aes128_Sha256_RsaOaep,
      SecurityPolicy.Aes256_Sha256_RsaPss,
    ],
    securityModes: [MessageSecurityMode.None, MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: true,
    userManager: {
      isValidUser: (username, password) => username === "reader" && password === "secret",
    },
    serverCapabilities: {
      operationLimits: { maxNodesPerRead, maxNodesPerBrowse: 100, maxMonitoredItemsPerCall: 100 },
    },
    serverInfo: { applicationUri: "urn:sightglass-bms:peer:node-opcua", applicationName: { text: "Sightglass test peer" } },
    buildInfo: { productName: "sightglass-opcua-peer" },
  });

  server.on("request", (request) => out("SERVICE " + request.schema.name));

  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const ns = addressSpace.registerNamespace("urn:sightglass-bms:peer:building");

  const building = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Building", nodeId: "s=Building" });
  const start = Date.now();
  const t = () => (Date.now() - start) / 1000;
  const wave = (base, amp, period, phase) => () => base + amp * Math.sin((2 * Math.PI * t()) / period + phase);
  const vars = [];

  function analog(parent, id, name, unit, fn) {
    const v = ns.addAnalogDataItem({
      componentOf: parent,
      browseName: name,
      nodeId: "s=" + id,
      dataType: "Double",
      engineeringUnits: unit,
      engineeringUnitsRange: { low: -100, high: 1000 },
      minimumSamplingInterval: 100,
    });
    v.setValueFromSource(new Variant({ dataType: DataType.Double, value: fn() }));
    vars.push({ v, fn, type: DataType.Double });
    return v;
  }

  function digital(parent, id, name, fn) {
    const v = ns.addVariable({
      componentOf: parent,
      browseName: name,
      nodeId: "s=" + id,
      dataType: "Boolean",
      minimumSamplingInterval: 100,
    });
    v.setValueFromSource(new Variant({ dataType: DataType.Boolean, value: fn() }));
    vars.push({ v, fn, type: DataType.Boolean });
    return v;
  }

  const ahu1 = ns.addFolder(building, { browseName: "AHU1", nodeId: "s=AHU1" });
  analog(ahu1, "AHU1.SupplyAirTemp", "SupplyAirTemp", standardUnits.degree_celsius, wave(13, 1.5, 20, 0));
  analog(ahu1, "AHU1.ReturnAirTemp", "ReturnAirTemp", standardUnits.degree_celsius, wave(22, 0.8, 60, 1));
  analog(ahu1, "AHU1.FanSpeed", "FanSpeed", standardUnits.percent, wave(65, 20, 10, 0));
  digital(ahu1, "AHU1.FanStatus", "FanStatus", () => t() % 60 < 50);

  const plant = ns.addFolder(building, { browseName: "Plant", nodeId: "s=Plant" });
  const chw = analog(plant, "Plant.ChilledWaterSupplyTemp", "ChilledWaterSupplyTemp", standardUnits.degree_celsius, wave(6.5, 0.5, 30, 0));
  addressSpace.installHistoricalDataNode(chw, { maxOnlineValues: 100000 });
  analog(plant, "Plant.ChillerPower", "ChillerPower", standardUnits.kilowatt, wave(180, 40, 40, 0));
  if (process.argv.includes("--steady")) {
    const sp = ns.addAnalogDataItem({
      componentOf: plant,
      browseName: "ChillerSetpoint",
      nodeId: "s=Plant.ChillerSetpoint",
      dataType: "Double",
      engineeringUnits: standardUnits.degree_celsius,
      engineeringUnitsRange: { low: -100, high: 1000 },
    });
    // Set once, never in the timer below: a steady value.
    sp.setValueFromSource(new Variant({ dataType: DataType.Double, value: 6.0 }), StatusCodes.Good);
  }

  const zf = ns.addFolder(building, { browseName: "Zones", nodeId: "s=Zones" });
  for (let i = 1; i <= zones; i++) {
    const z = ns.addFolder(zf, { browseName: "Zone" + i, nodeId: "s=Zones.Zone" + i });
    analog(z, "Zones.Zone" + i + ".Temp", "Temp", standardUnits.degree_celsius, wave(21.5, 1, 60, i));
  }

  // Values change every 200 ms; the historized one is recorded each time.
  const timer = setInterval(() => {
    for (const { v, fn, type } of vars) {
      v.setValueFromSource(new Variant({ dataType: type, value: fn() }), StatusCodes.Good);
    }
  }, 200);

  await server.start();
  out("READY " + server.endpoints[0].port + " " + server.getEndpointUrl());

  const stop = async () => {
    clearInterval(timer);
    await server.shutdown(0);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  // With --exit-with-stdin the server ends when its parent goes away
  // (stdin closes), so a crashed test run leaves no server behind.
  if (process.argv.includes("--exit-with-stdin")) {
    process.stdin.on("end", stop);
    process.stdin.on("error", stop);
    process.stdin.resume();
  }
}

main().catch((err) => {
  process.stderr.write("opcua_server: " + (err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});

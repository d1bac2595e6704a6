// A BACnet/IP device on @bacnet-js/client (written by others), for
// Sightglass's integration tests. It serves analog, binary and multi-state
// objects and a trend log, answers Who-Is, ReadProperty,
// ReadPropertyMultiple (ALL and REQUIRED too) and ReadRange, and prints one
// JSON line per service it receives, of any kind, so a test can assert that
// only reads arrived. Writes are logged and refused.
//
//   node bacnet_device.js --interface 127.0.0.2 --port 47808 --device 4242 [--iam broadcast] [--broadcast-address 255.255.255.255:47808]
//
// It prints {"event":"listening",...} once bound. Every answer is unicast to
// the asker, except the I-Am with --iam broadcast; its broadcast address is
// the loopback broadcast 127.255.255.255 on its own port, or
// --broadcast-address (only ever given inside a test's network namespace).
'use strict';

const bacnet = require('@bacnet-js/client');
const Client = bacnet.default;
const asn1 = require('@bacnet-js/client/dist/lib/asn1');
const npdu = require('@bacnet-js/client/dist/lib/npdu');
const apdu = require('@bacnet-js/client/dist/lib/apdu');
const ReadRange = require('@bacnet-js/client/dist/lib/services/ReadRange').default;

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
const iface = args.interface || '127.0.0.2';
const port = parseInt(args.port || '47808', 10);
const deviceId = parseInt(args.device || '4242', 10);
// --iam broadcast answers Who-Is with a broadcast I-Am, as many devices do,
// to the loopback broadcast address on the peer's own port.
const broadcastIAm = args.iam === 'broadcast';

const T = bacnet.ApplicationTag;
const OT = { AI: 0, BI: 3, BV: 5, DEVICE: 8, MSV: 19, TL: 20 };
const P = {
  ALL: 8, DESCRIPTION: 28, EVENT_STATE: 36, LOG_BUFFER: 131, LOG_DEVICE_OBJECT_PROPERTY: 132,
  MAX_APDU: 62, NUMBER_OF_STATES: 74, OBJECT_ID: 75, OBJECT_LIST: 76, OBJECT_NAME: 77, OBJECT_TYPE: 79,
  OUT_OF_SERVICE: 81, PRESENT_VALUE: 85, SERVICES_SUPPORTED: 97, RECORD_COUNT: 141, RELIABILITY: 103,
  REQUIRED: 105, SEGMENTATION: 107, STATE_TEXT: 110, STATUS_FLAGS: 111, TOTAL_RECORD_COUNT: 145,
  UNITS: 117, VENDOR_ID: 120, SYSTEM_STATUS: 112, VENDOR_NAME: 121, MODEL_NAME: 70,
};
const ARRAY_ALL = 0xffffffff;

// Bit strings in this library hold bit 0 in the least significant bit.
const flags = (inAlarm, fault, overridden, oos) => ({
  type: T.BIT_STRING,
  value: { bitsUsed: 4, value: [(inAlarm ? 1 : 0) | (fault ? 2 : 0) | (overridden ? 4 : 0) | (oos ? 8 : 0)] },
});
const real = (v) => ({ type: T.REAL, value: v });
const enm = (v) => ({ type: T.ENUMERATED, value: v });
const uns = (v) => ({ type: T.UNSIGNED_INTEGER, value: v });
const str = (v) => ({ type: T.CHARACTER_STRING, value: v });
const oid = (type, instance) => ({ type: T.OBJECTIDENTIFIER, value: { type, instance } });

const logStart = Date.now() - 60 * 60 * 1000; // an hour of records, one a minute
const logEvery = 60 * 1000;
const aiValue = (t) => 20 + Math.round(Math.sin(t / 600000) * 200) / 100;

function obj(type, instance, name, extra) {
  return Object.assign({ type, instance, name }, extra);
}
const objects = [
  obj(OT.AI, 0, 'Zone Temp', { units: 62, description: 'zone temperature', pv: () => real(aiValue(Date.now())), flags: flags(false, false, false, false) }),
  obj(OT.AI, 1, 'Duct Static', { units: 58, description: 'duct static pressure', pv: () => real(1.25), flags: flags(false, true, false, false), reliability: 7 }),
  obj(OT.BI, 0, 'Fan Status', { description: 'supply fan status', pv: () => enm(1), flags: flags(false, false, false, true) }),
  obj(OT.BV, 1, 'Occupied', { description: 'occupancy command', pv: () => enm(0), flags: flags(false, false, true, false) }),
  obj(OT.MSV, 0, 'Mode', { description: 'operating mode', pv: () => uns(2), flags: flags(true, false, false, false), states: ['off', 'heat', 'cool'] }),
  obj(OT.TL, 0, 'Zone Temp Log', { description: 'trend of zone temp', log: { source: { type: OT.AI, instance: 0 } } }),
];

function find(id) {
  if (id.type === OT.DEVICE && (id.instance === deviceId || id.instance === 0x3fffff)) {
    return { type: OT.DEVICE, instance: deviceId, name: 'sightglass-node-peer', description: 'node peer' };
  }
  return objects.find((o) => o.type === id.type && o.instance === id.instance);
}

function records(now) {
  const n = Math.floor((now - logStart) / logEvery) + 1;
  return n;
}

function propertyList(o, required) {
  const common = [P.OBJECT_ID, P.OBJECT_NAME, P.OBJECT_TYPE];
  if (o.type === OT.DEVICE) {
    return common.concat([P.SYSTEM_STATUS, P.VENDOR_NAME, P.VENDOR_ID, P.MODEL_NAME, P.OBJECT_LIST,
      P.MAX_APDU, P.SEGMENTATION, P.SERVICES_SUPPORTED], required ? [] : [P.DESCRIPTION]);
  }
  if (o.log) {
    return common.concat([P.STATUS_FLAGS, P.EVENT_STATE, P.RECORD_COUNT, P.TOTAL_RECORD_COUNT],
      required ? [] : [P.DESCRIPTION]);
  }
  let l = common.concat([P.PRESENT_VALUE, P.STATUS_FLAGS, P.EVENT_STATE, P.OUT_OF_SERVICE]);
  if (o.units !== undefined) l.push(P.UNITS);
  if (o.states) l.push(P.NUMBER_OF_STATES);
  if (!required) {
    l = l.concat([P.DESCRIPTION, P.RELIABILITY]);
    if (o.states) l.push(P.STATE_TEXT);
  }
  return l;
}

const UNKNOWN_OBJECT = { errorClass: 1, errorCode: 31 };
const UNKNOWN_PROPERTY = { errorClass: 2, errorCode: 32 };

// read returns [values] or {error}.
function read(o, prop, index) {
  if (!propertyList(o, false).includes(prop)) return { error: UNKNOWN_PROPERTY };
  const one = (v) => [v];
  const array = (items) => {
    if (index === undefined || index === ARRAY_ALL) return items;
    if (index === 0) return [uns(items.length)];
    if (index <= items.length) return [items[index - 1]];
    return { error: { errorClass: 2, errorCode: 42 } };
  };
  switch (prop) {
    case P.OBJECT_ID: return one(oid(o.type, o.instance));
    case P.OBJECT_NAME: return one(str(o.name));
    case P.OBJECT_TYPE: return one(enm(o.type));
    case P.DESCRIPTION: return one(str(o.description || ''));
    case P.PRESENT_VALUE: return one(o.pv());
    case P.STATUS_FLAGS: return one(o.flags || flags(false, false, false, false));
    case P.EVENT_STATE: return one(enm(0));
    case P.OUT_OF_SERVICE: return one({ type: T.BOOLEAN, value: !!(o.flags && (o.flags.value.value[0] & 8)) });
    case P.RELIABILITY: return one(enm(o.reliability || 0));
    case P.UNITS: return one(enm(o.units));
    case P.NUMBER_OF_STATES: return one(uns(o.states.length));
    case P.STATE_TEXT: return array(o.states.map(str));
    case P.SYSTEM_STATUS: return one(enm(0));
    case P.VENDOR_NAME: return one(str('bacnet-js peer'));
    case P.VENDOR_ID: return one(uns(260));
    case P.MODEL_NAME: return one(str('bacnet_device.js'));
    case P.MAX_APDU: return one(uns(1476));
    case P.SEGMENTATION: return one(enm(3)); // no-segmentation
    case P.SERVICES_SUPPORTED: {
      const bits = [0, 0, 0, 0, 0, 0];
      for (const s of [12, 14, 26]) bits[s >> 3] |= 1 << (s & 7); // ReadProperty, RPM, ReadRange
      return one({ type: T.BIT_STRING, value: { bitsUsed: 41, value: bits } });
    }
    case P.OBJECT_LIST:
      return array([oid(OT.DEVICE, deviceId)].concat(objects.map((x) => oid(x.type, x.instance))));
    case P.RECORD_COUNT: case P.TOTAL_RECORD_COUNT: return one(uns(records(Date.now())));
    default: return { error: UNKNOWN_PROPERTY };
  }
}

function log(event, msg, extra) {
  const sender = msg && msg.header && msg.header.sender;
  process.stdout.write(JSON.stringify(Object.assign({ event, from: sender ? sender.address : null }, extra || {})) + '\n');
}

const broadcastAddress = args['broadcast-address'] || `127.255.255.255:${port}`;
const client = new Client({ port, interface: iface, broadcastAddress, apduTimeout: 2000 });

// Every service the library knows gets a listener, so nothing arrives
// unlogged; the read services are answered, the rest refused.
const confirmed = ['readProperty', 'writeProperty', 'readPropertyMultiple', 'writePropertyMultiple', 'covNotify',
  'atomicWriteFile', 'atomicReadFile', 'subscribeCov', 'subscribeProperty', 'deviceCommunicationControl',
  'reinitializeDevice', 'eventNotify', 'readRange', 'createObject', 'deleteObject', 'alarmAcknowledge',
  'getAlarmSummary', 'getEnrollmentSummary', 'getEventInformation', 'lifeSafetyOperation', 'addListElement',
  'removeListElement', 'privateTransfer'];
const unconfirmed = ['iAm', 'whoIs', 'whoHas', 'covNotifyUnconfirmed', 'timeSync', 'timeSyncUTC', 'iHave'];
const answered = new Set(['readProperty', 'readPropertyMultiple', 'readRange', 'whoIs']);

for (const name of confirmed.concat(unconfirmed)) {
  client.on(name, (msg) => {
    const extra = { service: name, invoke_id: msg.invokeId };
    if (name === 'whoIs' && msg.payload) extra.low = msg.payload.lowLimit; // the tests' log barrier
    log('service', msg, extra);
    if (!answered.has(name) && msg.header && msg.header.expectingReply) {
      client.errorResponse(msg.header.sender, msg.service, msg.invokeId, 5, 29); // services: service-request-denied
    }
  });
}

client.on('whoIs', (msg) => {
  const p = msg.payload || {};
  if (p.lowLimit !== undefined && (deviceId < p.lowLimit || deviceId > p.highLimit)) return;
  client.iAmResponse(broadcastIAm ? null : msg.header.sender, deviceId, 3, 260);
});

client.on('readProperty', (msg) => {
  const { objectId, property } = msg.payload;
  const o = find(objectId);
  if (o && o.log && property.id === P.LOG_DEVICE_OBJECT_PROPERTY) {
    // The library cannot encode a BACnetDeviceObjectPropertyReference as
    // property data, so this answer is built from its encoders.
    const buffer = client._getApduBuffer(msg.header.sender);
    npdu.encode(buffer, bacnet.NpduControlPriority.NORMAL_MESSAGE, msg.header.sender);
    apdu.encodeComplexAck(buffer, bacnet.PduType.COMPLEX_ACK, bacnet.ConfirmedServiceChoice.READ_PROPERTY, msg.invokeId);
    asn1.encodeContextObjectId(buffer, 0, objectId.type, objectId.instance);
    asn1.encodeContextEnumerated(buffer, 1, property.id);
    asn1.encodeOpeningTag(buffer, 3);
    asn1.encodeContextObjectId(buffer, 0, o.log.source.type, o.log.source.instance);
    asn1.encodeContextEnumerated(buffer, 1, P.PRESENT_VALUE);
    asn1.encodeClosingTag(buffer, 3);
    client.sendBvlc(msg.header.sender, buffer);
    return;
  }
  const res = o ? read(o, property.id, property.index) : { error: UNKNOWN_OBJECT };
  if (res.error) {
    client.errorResponse(msg.header.sender, msg.service, msg.invokeId, res.error.errorClass, res.error.errorCode);
    return;
  }
  client.readPropertyResponse(msg.header.sender, msg.invokeId, { type: o.type, instance: o.instance }, property, res);
});

client.on('readPropertyMultiple', (msg) => {
  const out = [];
  for (const spec of msg.payload.properties) {
    const o = find(spec.objectId);
    const values = [];
    for (const p of spec.properties) {
      let ids = [p.id];
      if (o && (p.id === P.ALL || p.id === P.REQUIRED)) ids = propertyList(o, p.id === P.REQUIRED);
      for (const id of ids) {
        const idx = ids.length > 1 ? ARRAY_ALL : p.index;
        const res = o ? read(o, id, idx) : { error: UNKNOWN_OBJECT };
        values.push({
          property: { id, index: idx },
          value: res.error ? [{ value: Object.assign({ type: 'BacnetError' }, res.error) }] : res,
        });
      }
    }
    out.push({ objectId: o ? { type: o.type, instance: o.instance } : spec.objectId, values });
  }
  client.readPropertyMultipleResponse(msg.header.sender, msg.invokeId, out);
});

// ReadRange has no response helper in the library: the answer is built
// from its encoders, by position, sequence number or time.
client.on('readRange', (msg) => {
  const { objectId, property, requestType, position, time, count } = msg.payload;
  const o = find(objectId);
  if (!o || !o.log || property.id !== P.LOG_BUFFER) {
    client.errorResponse(msg.header.sender, msg.service, msg.invokeId, 2, 32);
    return;
  }
  const total = records(Date.now());
  const at = (seq) => new Date(logStart + (seq - 1) * logEvery);
  let lo = 1;
  let hi = total;
  const c = count === undefined ? total : count;
  if (requestType === bacnet.ReadRangeType.BY_POSITION || requestType === bacnet.ReadRangeType.BY_SEQUENCE_NUMBER) {
    if (c >= 0) { lo = position; hi = position + c - 1; } else { lo = position + c + 1; hi = position; }
  } else if (requestType === bacnet.ReadRangeType.BY_TIME_REFERENCE_TIME_COUNT) {
    const k = time.getTime() < logStart ? 0 : Math.floor((time.getTime() - logStart) / logEvery) + 1;
    if (c >= 0) { lo = k + 1; hi = k + c; } else {
      const older = Math.ceil((time.getTime() - logStart) / logEvery);
      hi = older; lo = older + c + 1;
    }
  }
  lo = Math.max(lo, 1);
  hi = Math.min(hi, total);
  let more = false;
  if (hi - lo + 1 > 40) { hi = lo + 39; more = true; } // what fits one unsegmented answer
  const items = { buffer: Buffer.alloc(1472), offset: 0 };
  let n = 0;
  for (let s = lo; s <= hi; s++) {
    asn1.encodeOpeningTag(items, 0);
    asn1.encodeApplicationDate(items, at(s));
    asn1.encodeApplicationTime(items, at(s));
    asn1.encodeClosingTag(items, 0);
    asn1.encodeOpeningTag(items, 1);
    asn1.encodeContextReal(items, 2, aiValue(at(s).getTime()));
    asn1.encodeClosingTag(items, 1);
    n++;
  }
  const buffer = client._getApduBuffer(msg.header.sender);
  npdu.encode(buffer, bacnet.NpduControlPriority.NORMAL_MESSAGE, msg.header.sender);
  apdu.encodeComplexAck(buffer, bacnet.PduType.COMPLEX_ACK, bacnet.ConfirmedServiceChoice.READ_RANGE, msg.invokeId);
  const resultFlags = { bitsUsed: 3, value: [(n > 0 && lo === 1 ? 1 : 0) | (n > 0 && hi === total ? 2 : 0) | (more ? 4 : 0)] };
  ReadRange.encodeAcknowledge(buffer, objectId, property.id, property.index, resultFlags, n,
    items.buffer.subarray(0, items.offset), requestType, lo);
  client.sendBvlc(msg.header.sender, buffer);
});

client.on('error', (err) => log('error', null, { error: String(err && err.message) }));
client.on('listening', () => log('listening', null, { interface: iface, port, device: deviceId }));

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { client.close(); process.exit(0); });
}

#!/usr/bin/env node
// A test SMSC: an SMPP 3.4 server (npm `smpp` 0.5.1, node-smpp) with an HTTP control port.
//
//   node smsc.js --smpp-port P --http-port H --record FILE
//       [--system-id paystep] [--password secret] [--id-format hex|decimal]
//       [--auto-dlr on|off] [--dlr-delay-ms 100] [--resp-delay-ms 0]
//       [--tls-cert FILE --tls-key FILE]
//
// Port 0 picks a free port. When both ports listen, one JSON line goes to stdout:
//   {"event":"listening","smpp_port":P,"http_port":H,"pid":N}
//
// Every accepted submit_sm is appended to FILE as one JSON line before its submit_sm_resp
// is sent, so the file spans restarts and is complete up to a SIGKILL.
//
// HTTP control (JSON):
//   GET  /submits          every submit accepted by this process
//   GET  /binds            the bound sessions: [{system_id, bind_type}]
//   GET  /stats            {submits, throttled, in_flight, max_in_flight, max_per_second}
//   POST /stats/reset      forgets max_in_flight and max_per_second
//   POST /mo {"from", "to", "text", "data_coding"?}
//                          sends a deliver_sm to a bound receiver or transceiver and answers
//                          with the ESME's deliver_sm_resp: {"command_status"}
//   POST /dlr {"message_id", "stat", "err"?, "tlvs"?}
//                          sends a delivery receipt for an accepted submit now
//   POST /throttle {"count", "status"?, "after"?}
//                          the next `count` submit_sm get ESME_RTHROTTLED (or `status`),
//                          after `after` more are accepted first
//   POST /unbind           sends unbind to every bound session
//   POST /hold {"on"}      on: accepted submits wait unanswered (in flight) until off;
//                          off: answers them, each after --resp-delay-ms as usual
//
// node-smpp quirks this script avoids: it throws on an undefined short_message; it drops
// TLVs it does not know when encoding; it decodes texts by `data_coding & 0x0F`.
'use strict';

const fs = require('fs');
const http = require('http');
const smpp = require('smpp');

function parseArguments(argv) {
  const options = {
    smppPort: null,
    httpPort: null,
    record: null,
    systemId: 'paystep',
    password: 'secret',
    idFormat: 'decimal',
    autoDlr: true,
    dlrDelayMs: 100,
    respDelayMs: 0,
    tlsCert: null,
    tlsKey: null,
  };
  for (let index = 2; index < argv.length; index += 2) {
    const name = argv[index];
    const value = argv[index + 1];
    if (value === undefined) {
      fail(`${name} needs a value`);
    }
    switch (name) {
      case '--smpp-port': options.smppPort = Number(value); break;
      case '--http-port': options.httpPort = Number(value); break;
      case '--record': options.record = value; break;
      case '--system-id': options.systemId = value; break;
      case '--password': options.password = value; break;
      case '--id-format':
        if (value !== 'hex' && value !== 'decimal') fail('--id-format is hex or decimal');
        options.idFormat = value;
        break;
      case '--auto-dlr':
        if (value !== 'on' && value !== 'off') fail('--auto-dlr is on or off');
        options.autoDlr = value === 'on';
        break;
      case '--dlr-delay-ms': options.dlrDelayMs = Number(value); break;
      case '--resp-delay-ms': options.respDelayMs = Number(value); break;
      case '--tls-cert': options.tlsCert = value; break;
      case '--tls-key': options.tlsKey = value; break;
      default: fail(`unknown option ${name}`);
    }
  }
  if (!Number.isInteger(options.smppPort) || !Number.isInteger(options.httpPort)) {
    fail('--smpp-port and --http-port are required (0 picks a free port)');
  }
  if (!options.record) fail('--record FILE is required');
  if (Boolean(options.tlsCert) !== Boolean(options.tlsKey)) {
    fail('--tls-cert and --tls-key go together');
  }
  return options;
}

function fail(message) {
  process.stderr.write(`smsc.js: ${message}\n`);
  process.exit(2);
}

function log(message, fields) {
  const suffix = fields ? ` ${JSON.stringify(fields)}` : '';
  process.stderr.write(`${new Date().toISOString()} smsc[${process.pid}] ${message}${suffix}\n`);
}

const options = parseArguments(process.argv);

// Keep the raw short_message octets of every submit_sm: node-smpp replaces them with the
// decoded text, and the tests want both.
const messageFilter = smpp.commands.submit_sm.params.short_message.filter;
smpp.commands.submit_sm.params.short_message.filter = {
  encode: messageFilter.encode,
  decode: function (value, skipUdh) {
    this.raw_short_message = value;
    return messageFilter.decode.call(this, value, skipUdh);
  },
};

// Unique across restarts: the process's start time, then a counter.
const startedAtMs = Date.now();
let idCounter = 0;
function nextMessageId() {
  idCounter += 1;
  if (options.idFormat === 'hex') {
    return (startedAtMs.toString(16) + idCounter.toString(16).padStart(6, '0')).toUpperCase();
  }
  return `${startedAtMs}${String(idCounter).padStart(6, '0')}`;
}

const submits = [];
const submitsById = new Map();
const stats = {
  submits: 0,
  throttled: 0,
  in_flight: 0,
  max_in_flight: 0,
  max_per_second: 0,
};
// Arrival times (ms, monotonic) of submit_sm in the last second, for max_per_second.
const recentArrivals = [];
let throttleRemaining = 0;
let throttleAfter = 0;
let throttleStatus = smpp.ESME_RTHROTTLED;

function noteArrival() {
  const now = performance.now();
  recentArrivals.push(now);
  while (recentArrivals.length && recentArrivals[0] <= now - 1000) {
    recentArrivals.shift();
  }
  stats.max_per_second = Math.max(stats.max_per_second, recentArrivals.length);
  stats.in_flight += 1;
  stats.max_in_flight = Math.max(stats.max_in_flight, stats.in_flight);
}

// While holding, answers wait here (a test builds a backlog without racing the ESME).
let holding = false;
const held = [];

function respond(session, pdu, fields) {
  const send = () => {
    stats.in_flight -= 1;
    session.send(pdu.response(fields));
  };
  if (holding) {
    held.push(send);
  } else if (options.respDelayMs > 0) {
    setTimeout(send, options.respDelayMs);
  } else {
    send();
  }
}

function udhOf(raw, esmClass) {
  if (!(esmClass & 0x40) || !raw || raw.length === 0) return null;
  return raw.slice(0, raw[0] + 1);
}

function concatenationOf(udh) {
  if (!udh) return null;
  let offset = 1;
  while (offset + 1 < udh.length) {
    const iei = udh[offset];
    const length = udh[offset + 1];
    const data = udh.slice(offset + 2, offset + 2 + length);
    if (iei === 0x00 && length === 3) {
      return { reference: data[0], total: data[1], sequence: data[2] };
    }
    if (iei === 0x08 && length === 4) {
      return { reference: data.readUInt16BE(0), total: data[2], sequence: data[3] };
    }
    offset += 2 + length;
  }
  return null;
}

function textOf(pdu) {
  const message = pdu.short_message && pdu.short_message.message;
  if (typeof message === 'string') return message;
  return null;
}

function recordSubmit(session, pdu) {
  const raw = pdu.raw_short_message || Buffer.alloc(0);
  const udh = udhOf(raw, pdu.esm_class);
  const record = {
    message_id: nextMessageId(),
    system_id: session.bound.system_id,
    source_addr: pdu.source_addr,
    source_addr_ton: pdu.source_addr_ton,
    source_addr_npi: pdu.source_addr_npi,
    destination_addr: pdu.destination_addr,
    dest_addr_ton: pdu.dest_addr_ton,
    dest_addr_npi: pdu.dest_addr_npi,
    data_coding: pdu.data_coding,
    esm_class: pdu.esm_class,
    registered_delivery: pdu.registered_delivery,
    short_message_hex: raw.toString('hex'),
    udh_hex: udh ? udh.toString('hex') : null,
    user_message_reference: pdu.user_message_reference === undefined
      ? null : pdu.user_message_reference,
    concatenation: concatenationOf(udh),
    text: textOf(pdu),
    received_at_ms: Date.now(),
    pid: process.pid,
  };
  // Synchronously, before the response: a record never misses an acknowledged submit.
  fs.appendFileSync(options.record, `${JSON.stringify(record)}\n`);
  submits.push(record);
  submitsById.set(record.message_id, record);
  return record;
}

const RECEIPT_STATES = {
  ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7,
  REJECTD: 8,
};

function receiptDate(date) {
  const pad = (value) => String(value).padStart(2, '0');
  return `${pad(date.getUTCFullYear() % 100)}${pad(date.getUTCMonth() + 1)}` +
    `${pad(date.getUTCDate())}${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}`;
}

// A bound session that may receive deliver_sm: the submitting session when it is a
// transceiver, else any receiver or transceiver of the same system_id.
function receiverFor(systemId, preferred) {
  if (preferred && preferred.bound && preferred.bound.bind_type === 'transceiver' &&
      !preferred.closed) {
    return preferred;
  }
  return sessions.find((session) => session.bound && !session.closed &&
    session.bound.system_id === systemId &&
    (session.bound.bind_type === 'receiver' || session.bound.bind_type === 'transceiver'));
}

function deliver(session, fields, timeoutMs) {
  return new Promise((resolve) => {
    let done = false;
    const timer = setTimeout(() => {
      if (!done) { done = true; resolve({ timeout: true }); }
    }, timeoutMs);
    const sent = session.deliver_sm(fields, (resp) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        resolve({ command_status: resp.command_status, sequence_number: resp.sequence_number });
      }
    });
    if (!sent && !done) {
      done = true;
      clearTimeout(timer);
      resolve({ not_sent: true });
    }
  });
}

function receiptFields(record, stat, err, withTlvs) {
  const now = new Date();
  const delivered = stat === 'DELIVRD' ? '001' : '000';
  const quoted = (record.text || '').slice(0, 20);
  const text = `id:${record.message_id} sub:001 dlvrd:${delivered} ` +
    `submit date:${receiptDate(new Date(record.received_at_ms))} ` +
    `done date:${receiptDate(now)} stat:${stat} err:${err} text:${quoted}`;
  const fields = {
    source_addr_ton: record.dest_addr_ton,
    source_addr_npi: record.dest_addr_npi,
    source_addr: record.destination_addr,
    dest_addr_ton: record.source_addr_ton,
    dest_addr_npi: record.source_addr_npi,
    destination_addr: record.source_addr,
    esm_class: 0x04,
    data_coding: 0x00,
    // Never undefined: node-smpp throws on a missing short_message.
    short_message: { message: text },
  };
  if (withTlvs) {
    fields.receipted_message_id = record.message_id;
    fields.message_state = RECEIPT_STATES[stat] || RECEIPT_STATES.UNKNOWN;
  }
  return fields;
}

async function sendReceipt(record, stat, err, withTlvs, timeoutMs) {
  const session = receiverFor(record.system_id, record.session);
  if (!session) return { no_receiver: true };
  return deliver(session, receiptFields(record, stat, err, withTlvs), timeoutMs);
}

const sessions = [];

function handleSession(session) {
  session.bound = null;
  session.closed = false;
  sessions.push(session);
  session.on('close', () => {
    session.closed = true;
    const index = sessions.indexOf(session);
    if (index >= 0) sessions.splice(index, 1);
    if (session.bound) log('A session closed.', session.bound);
  });
  session.on('error', (error) => log('A session failed.', { error: String(error) }));

  const bind = (bindType) => (pdu) => {
    if (session.bound) {
      session.send(pdu.response({ command_status: smpp.ESME_RALYBND }));
      return;
    }
    if (pdu.system_id !== options.systemId || pdu.password !== options.password) {
      log('Refused a bind.', { system_id: pdu.system_id, bind_type: bindType });
      session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }), () => session.close());
      return;
    }
    session.bound = { system_id: pdu.system_id, bind_type: bindType };
    log('Bound a session.', session.bound);
    session.send(pdu.response({ system_id: 'paystep-smsc' }));
  };
  session.on('bind_transceiver', bind('transceiver'));
  session.on('bind_transmitter', bind('transmitter'));
  session.on('bind_receiver', bind('receiver'));

  session.on('submit_sm', (pdu) => {
    if (!session.bound || session.bound.bind_type === 'receiver') {
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    noteArrival();
    if (throttleAfter > 0) {
      throttleAfter -= 1;
    } else if (throttleRemaining > 0) {
      throttleRemaining -= 1;
      stats.throttled += 1;
      respond(session, pdu, { command_status: throttleStatus });
      return;
    }
    const record = recordSubmit(session, pdu);
    stats.submits += 1;
    respond(session, pdu, { message_id: record.message_id });
    if (options.autoDlr && (record.registered_delivery & 0x03) !== 0) {
      const withSession = Object.assign({}, record);
      Object.defineProperty(withSession, 'session', { value: session, enumerable: false });
      setTimeout(() => {
        sendReceipt(withSession, 'DELIVRD', '000', true, 10000).then((outcome) => {
          if (outcome.command_status !== 0) {
            log('A delivery receipt was not acknowledged.',
              { message_id: record.message_id, outcome });
          }
        });
      }, options.dlrDelayMs);
    }
  });
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    log('The ESME unbound.', session.bound);
    session.send(pdu.response(), () => session.close());
  });
  session.on('unknown', (pdu) => session.send(pdu.response()));
}

function readJson(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (!body) return resolve({});
      try {
        resolve(JSON.parse(body));
      } catch (error) {
        reject(error);
      }
    });
    request.on('error', reject);
  });
}

function reply(response, status, body) {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(text);
}

async function route(request, response) {
  const url = request.url.split('?')[0];
  const key = `${request.method} ${url}`;
  switch (key) {
    case 'GET /submits':
      return reply(response, 200, submits);
    case 'GET /binds':
      return reply(response, 200, sessions.filter((session) => session.bound)
        .map((session) => session.bound));
    case 'GET /stats':
      return reply(response, 200, stats);
    case 'POST /stats/reset':
      stats.max_in_flight = stats.in_flight;
      stats.max_per_second = 0;
      recentArrivals.length = 0;
      return reply(response, 200, stats);
    case 'POST /throttle': {
      const body = await readJson(request);
      throttleRemaining = Number(body.count) || 0;
      throttleAfter = Number(body.after) || 0;
      throttleStatus = body.status === undefined ? smpp.ESME_RTHROTTLED : Number(body.status);
      return reply(response, 200, { throttle_remaining: throttleRemaining });
    }
    case 'POST /mo': {
      const body = await readJson(request);
      if (typeof body.from !== 'string' || typeof body.text !== 'string') {
        return reply(response, 400, { error: 'from and text are required strings' });
      }
      const session = sessions.find((candidate) => candidate.bound && !candidate.closed &&
        (candidate.bound.bind_type === 'receiver' ||
          candidate.bound.bind_type === 'transceiver'));
      if (!session) return reply(response, 409, { error: 'no receiver or transceiver is bound' });
      const international = body.from.startsWith('+');
      let dataCoding = body.data_coding;
      if (dataCoding === undefined || dataCoding === null) {
        // 0x00 is node-smpp's GSM default alphabet (unpacked); 0x08 is UCS-2.
        dataCoding = smpp.encodings.ASCII.match(body.text) ? 0x00 : 0x08;
      }
      const outcome = await deliver(session, {
        source_addr_ton: international ? 1 : 0,
        source_addr_npi: 1,
        source_addr: international ? body.from.slice(1) : body.from,
        dest_addr_ton: 0,
        dest_addr_npi: 1,
        destination_addr: body.to || '12345',
        esm_class: 0x00,
        data_coding: dataCoding,
        short_message: { message: body.text },
      }, 10000);
      if (outcome.timeout) return reply(response, 504, { error: 'no deliver_sm_resp in 10 s' });
      if (outcome.not_sent) return reply(response, 409, { error: 'the session is not writable' });
      return reply(response, 200, outcome);
    }
    case 'POST /dlr': {
      const body = await readJson(request);
      const record = submitsById.get(body.message_id);
      if (!record) return reply(response, 404, { error: 'no such submit in this process' });
      const stat = body.stat || 'DELIVRD';
      const err = body.err || (stat === 'DELIVRD' ? '000' : '001');
      const outcome = await sendReceipt(record, stat, err, body.tlvs !== false, 10000);
      if (outcome.no_receiver) return reply(response, 409, { error: 'no receiver is bound' });
      if (outcome.timeout) return reply(response, 504, { error: 'no deliver_sm_resp in 10 s' });
      if (outcome.not_sent) return reply(response, 409, { error: 'the session is not writable' });
      return reply(response, 200, outcome);
    }
    case 'POST /hold': {
      const body = await readJson(request);
      holding = body.on === true;
      if (!holding) {
        held.splice(0).forEach((send) => {
          if (options.respDelayMs > 0) setTimeout(send, options.respDelayMs);
          else send();
        });
      }
      return reply(response, 200, { holding, held: held.length });
    }
    case 'POST /unbind': {
      const bound = sessions.filter((session) => session.bound && !session.closed);
      bound.forEach((session) => session.unbind(() => session.close()));
      return reply(response, 200, { unbound: bound.length });
    }
    default:
      return reply(response, 404, { error: `no route ${key}` });
  }
}

const serverOptions = options.tlsCert
  ? { cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey) }
  : {};
const smppServer = smpp.createServer(serverOptions, handleSession);
const httpServer = http.createServer((request, response) => {
  route(request, response).catch((error) => reply(response, 500, { error: String(error) }));
});

let listening = 0;
function announce() {
  listening += 1;
  if (listening < 2) return;
  const line = {
    event: 'listening',
    smpp_port: smppServer.address().port,
    http_port: httpServer.address().port,
    tls: Boolean(options.tlsCert),
    pid: process.pid,
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  log('Listening.', line);
}
smppServer.on('error', (error) => fail(`SMPP port: ${error}`));
httpServer.on('error', (error) => fail(`HTTP port: ${error}`));
smppServer.listen(options.smppPort, '127.0.0.1', announce);
httpServer.listen(options.httpPort, '127.0.0.1', announce);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}

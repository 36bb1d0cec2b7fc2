#!/usr/bin/env node
// MCP sessions through the official TypeScript SDK's client (@modelcontextprotocol/sdk, locked in
// package-lock.json beside this file), for tether's end-to-end tests. The same command line and
// output as client.py:
//
//   node client.mjs --url http://127.0.0.1:PORT/mcp --calls N [--slow SECONDS] [--after M] [--sessions S] [--parallel]
//                   [--call-timeout SECONDS]
//
// Each session: `initialize` (this SDK speaks the 2025-11-25 handshake era only), N `whoami` calls,
// and a clean close. The SDK's close() only aborts its requests: the DELETE that ends the session is
// terminateSession(), called first. With --slow the session also runs one `slow` call of that many
// seconds and makes its `whoami` calls while the slow call's SSE response is still streaming
// (--hangup: the server closes that response halfway and the SDK resumes it with Last-Event-ID),
// then M more `whoami` calls once the slow call has answered. The transport is fetch-based and keeps no cookies.
//
// One JSON line per session, as it ends: {"session", "results", "errors", "ids_sent", "http",
// "progress", "logs", "transport_errors"} ("transport_errors": what the SDK reported outside any
// call before the close began, e.g. a GET stream it could not open). Exit status 1 when any session
// had an error of either kind, 2 when the arguments are wrong.
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const MAX_CALLS = 1000;
const MAX_SESSIONS = 1000;
const MAX_SLOW_S = 60;
const SESSION_HEADER = 'mcp-session-id';

function usage(message) {
  process.stderr.write(`client.mjs: ${message}\n`);
  process.exit(2);
}

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        calls: { type: 'string', default: '3' },
        after: { type: 'string', default: '0' },
        slow: { type: 'string', default: '0' },
        steps: { type: 'string', default: '4' },
        hangup: { type: 'boolean', default: false },
        sessions: { type: 'string', default: '1' },
        parallel: { type: 'boolean', default: false },
        timeout: { type: 'string' },
        'call-timeout': { type: 'string' },
      },
    }));
  } catch (err) {
    usage(err.message);
  }
  const o = {
    url: values.url,
    calls: Number(values.calls),
    after: Number(values.after),
    slow: Number(values.slow),
    steps: Number(values.steps),
    hangup: values.hangup,
    sessions: Number(values.sessions),
    parallel: values.parallel,
  };
  if (!o.url) usage('--url is required');
  if (!/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):/.test(o.url)) usage("--url must be on this machine's loopback");
  const int = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;
  if (!int(o.calls, 0, MAX_CALLS) || !int(o.after, 0, MAX_CALLS) || !int(o.sessions, 1, MAX_SESSIONS) || !int(o.steps, 1, 600)
      || !(o.slow >= 0 && o.slow <= MAX_SLOW_S)) {
    usage(`--calls and --after 0..${MAX_CALLS}, --sessions 1..${MAX_SESSIONS}, --slow 0..${MAX_SLOW_S}, --steps 1..600`);
  }
  o.callTimeout = values['call-timeout'] !== undefined ? Number(values['call-timeout']) : undefined;
  if (o.callTimeout !== undefined && !(o.callTimeout > 0)) usage('--call-timeout must be a positive number of seconds');
  o.timeout = values.timeout !== undefined ? Number(values.timeout) : 30 + 2 * o.slow + 2 * (o.calls + o.after);
  if (!(o.timeout > 0)) usage('--timeout must be a positive number of seconds');
  return o;
}

function describe(err) {
  if (err && typeof err.code === 'number') return `${err.name ?? 'Error'} ${err.code}: ${err.message}`;
  return `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`;
}

function parse(tool, result) {
  const texts = (result.content ?? []).filter(c => c.type === 'text').map(c => c.text);
  if (result.isError) throw new Error(`${tool} answered an error: ${texts.join(' ')}`);
  if (texts.length !== 1) throw new Error(`${tool} answered ${texts.length} text blocks, not 1`);
  return JSON.parse(texts[0]);
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

async function session(o) {
  const out = { session: null, results: [], errors: [], ids_sent: [], http: [], progress: 0, logs: 0,
                transport_errors: [] };
  let closing = false;

  // Every request the SDK makes goes through here: which session id it carried, and its answer.
  const recordingFetch = async (url, init) => {
    const sid = new Headers(init?.headers).get(SESSION_HEADER);
    if (sid !== null && !out.ids_sent.includes(sid)) out.ids_sent.push(sid);
    if (out.session === null && sid !== null) out.session = sid;
    const response = await fetch(url, init);
    out.http.push(`${init?.method ?? 'GET'} ${response.status}`);
    return response;
  };

  const transport = new StreamableHTTPClientTransport(new URL(o.url), { fetch: recordingFetch });
  const client = new Client({ name: 'tether-e2e-ts', version: '1.0.0' });
  client.onerror = err => { if (!closing) out.transport_errors.push(describe(err)); };
  client.setNotificationHandler(LoggingMessageNotificationSchema, () => { out.logs += 1; });

  const slowS = Math.min(Math.max(o.slow, 0), MAX_SLOW_S);
  // The SDK's own default bound on a request is 60 s, shorter than the longest slow call.
  const callTimeoutMs = (o.callTimeout ?? 30 + slowS) * 1000;
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the session took longer than ${o.timeout} s`)), o.timeout * 1000);
  });

  const work = (async () => {
    await client.connect(transport);
    const slowResult = [];
    let slowDone = Promise.resolve();
    if (slowS > 0) {
      const args = { seconds: slowS, steps: o.steps };
      if (o.hangup) args.hangup = true;
      slowDone = client.callTool({ name: 'slow', arguments: args }, undefined, {
        timeout: callTimeoutMs,
        onprogress: () => { out.progress += 1; },
      }).then(r => { slowResult.push(parse('slow', r)); },
              err => { out.errors.push(`slow: ${describe(err)}`); });
    }
    // The short calls spread over the slow call's span, so they reach the server while its
    // response is still streaming.
    const paceMs = slowS > 0 ? (slowS * 1000) / (o.calls + 1) : 0;
    const whoami = async () => {
      try {
        out.results.push(parse('whoami', await client.callTool({ name: 'whoami', arguments: {} }, undefined,
                                                                { timeout: callTimeoutMs })));
      } catch (err) {
        out.errors.push(`whoami: ${describe(err)}`);
      }
    };
    for (let i = 0; i < o.calls; i++) {
      if (paceMs) await sleep(paceMs);
      await whoami();
    }
    await slowDone;
    out.results.push(...slowResult);
    for (let i = 0; i < o.after; i++) await whoami();
  })();

  try {
    await Promise.race([work, deadline]);
  } catch (err) {
    out.errors.push(describe(err));
  }
  closing = true;
  try {
    // Sends the DELETE (only while the transport holds a session id).
    if (transport.sessionId !== undefined) await Promise.race([transport.terminateSession(), deadline]);
  } catch (err) {
    out.errors.push(`DELETE: ${describe(err)}`);
  }
  await client.close().catch(() => {});
  clearTimeout(timer);
  if (out.session !== null && !out.http.includes('DELETE 200')) {
    out.errors.push('the session was not ended: no DELETE answered 200');
  }
  return out;
}

async function main() {
  const o = options();
  let failed = false;
  const one = async () => {
    const line = await session(o);
    failed = failed || line.errors.length > 0 || line.transport_errors.length > 0;
    process.stdout.write(JSON.stringify(line) + '\n');
  };
  if (o.parallel) {
    await Promise.all(Array.from({ length: o.sessions }, one));
  } else {
    for (let i = 0; i < o.sessions; i++) await one();
  }
  return failed ? 1 : 0;
}

// Exits at once: a stream the SDK still holds open must not keep the process alive.
main().then(code => process.exit(code), err => {
  process.stderr.write(`client.mjs: ${err?.stack ?? err}\n`);
  process.exit(1);
});

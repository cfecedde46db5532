#!/usr/bin/env node
// In-memory FHIR R4 server for fhir-adapter integration tests.
//
//   node tests/fhir_server/server.mjs [--port N]        (PORT env also works; 0 = any free port)
//
// The first stdout line is "LISTENING http://127.0.0.1:<port>/fhir/R4" (the FHIR base URL);
// everything else goes to stderr. SIGTERM/SIGINT stop it gracefully. See README.md for the
// supported interactions and the environment knobs (faults, page sizes, bundle limits).
//
// Layers: node:http (this file) -> Medplum FhirRouter (REST routing, batch/transaction
// processing, conditional create/update/delete, PATCH, history) -> TestRepository
// (MemoryRepository + validation, indexes, paging, transactions; repository.mjs).
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';
import { OperationOutcomeError, getStatus, globalSchema, isOk, normalizeOperationOutcome } from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import { isKnownResourceType, loadDefinitions, resourceTypes } from './fhir-setup.mjs';
import { TestRepository } from './repository.mjs';
import { createBulkExport } from './bulk-export.mjs';

// ------------------------------------------------------------------ config
const env = process.env;
const { values: args } = parseArgs({ options: { port: { type: 'string' } }, strict: false });
const num = (v, dflt) => (v === undefined || v === null || v === '' || !Number.isFinite(Number(v)) ? dflt : Number(v));
const config = {
  host: '127.0.0.1', // tests only: never listen on other interfaces
  port: num(args.port ?? env.PORT, 0),
  basePath: (env.BASE_PATH || '/fhir/R4').replace(/\/+$/, ''),
  defaultPageSize: num(env.DEFAULT_PAGE_SIZE, 20),
  maxPageSize: num(env.MAX_PAGE_SIZE, 1000),
  maxBundleEntries: num(env.MAX_TRANSACTION_ENTRIES, 0), // 0 = unlimited (batch and transaction)
  maxBodyBytes: num(env.MAX_BODY_MB, 512) * 1024 * 1024,
  logRequests: env.LOG_REQUESTS === '1',
  exitOnStdinClose: env.EXIT_ON_STDIN_CLOSE === '1',
  historyType: env.HISTORY_TYPE === '1', // type-level history ([type]/_history) offered at start and after a reset
  // the token endpoint checks a client secret (client_secret_basic or client_secret_post) when both are set
  tokenClientId: env.TOKEN_CLIENT_ID ?? '',
  tokenClientSecret: env.TOKEN_CLIENT_SECRET ?? '',
  requireToken: env.REQUIRE_TOKEN === '1', // FHIR requests (not /metadata) need a token the endpoint issued
};
// A server clock off the machine's (CLOCK_OFFSET_MS, e.g. -120000: two minutes behind): every time the server
// takes (meta.lastUpdated, deletions, a Bulk export's transactionTime, the Date header) is shifted by it.
const clockOffsetMs = num(env.CLOCK_OFFSET_MS, 0);
if (clockOffsetMs) {
  const MachineDate = Date;
  globalThis.Date = class ServerDate extends MachineDate {
    constructor(...args) {
      if (args.length === 0) super(MachineDate.now() + clockOffsetMs);
      else super(...args);
    }
    static now() {
      return MachineDate.now() + clockOffsetMs;
    }
  };
}
// Type-level history ([type]/_history, CapabilityStatement history-type): off unless HISTORY_TYPE=1 or
// POST /admin/history {"type_level": true}; a reset of everything sets it back to HISTORY_TYPE.
const history = { type_level: config.historyType };
// Fault injection; also changeable at runtime via POST /admin/faults.
const faults = {
  fault_503_rate: num(env.FAULT_503_RATE, 0), // fraction of FHIR requests answered 503
  fault_429_every: num(env.FAULT_429_EVERY, 0), // every Nth FHIR request answered 429
  fault_seed: num(env.FAULT_SEED, 1), // seed of the 503 PRNG (deterministic sequence)
  fault_retry_after: env.FAULT_RETRY_AFTER ?? '0', // Retry-After header on 429
  fault_reset_every: num(env.FAULT_RESET_EVERY, 0), // every Nth FHIR request: connection reset, no answer
  fault_slow_every: num(env.FAULT_SLOW_EVERY, 0), // every Nth FHIR request answered after fault_slow_ms
  fault_slow_ms: num(env.FAULT_SLOW_MS, 0),
  fault_slow_only: env.FAULT_SLOW_ONLY ?? '', // 'transaction': only batch/transaction POSTs are slowed ('' = any)
  fault_slow_phase: env.FAULT_SLOW_PHASE ?? 'before', // 'before': held, then processed; 'after': processed at once, the answer held
  fault_down_after: num(env.FAULT_DOWN_AFTER, 0), // from the Nth FHIR request on, the server is down...
  fault_down_ms: num(env.FAULT_DOWN_MS, 0), // ...for this long (0: until the faults are changed): every connection reset
  fault_match: env.FAULT_MATCH ?? '', // FHIR requests whose URL contains this text are always answered 503
  fault_401_after: num(env.FAULT_401_AFTER, 0), // from the Nth FHIR request on, fault_401_count requests answer 401
  fault_401_count: num(env.FAULT_401_COUNT, 1),
};
const MEDPLUM_VERSION = JSON.parse(
  readFileSync(new URL('./node_modules/@medplum/fhir-router/package.json', import.meta.url), 'utf8')
).version;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const CONTROL_PARAMS = new Set(['_count', '_offset', '_sort', '_include', '_revinclude', '_elements', '_summary', '_total', '_format', '_pretty']);

// ------------------------------------------------------------------- state
loadDefinitions();
const repo = new TestRepository({ defaultPageSize: config.defaultPageSize, maxPageSize: config.maxPageSize });
const router = new FhirRouter();
const bulk = createBulkExport({ repo, baseUrl: () => baseUrl, outcome: (...a) => outcome(...a), isKnownResourceType });
let baseUrl = ''; // http://127.0.0.1:PORT/fhir/R4, known after listen()
let stats;
let faultState;

function resetStats() {
  stats = {
    started_at: new Date().toISOString(),
    requests: { total: 0, by_method: {}, by_resource_type: {}, by_interaction: {}, by_status: {} },
    bundle_entries: { total: 0, by_method: {}, by_resource_type: {} },
    faults: { 503: 0, 429: 0, reset: 0, slow: 0, down: 0, match: 0, 401: 0 },
    tokens_issued: 0,
  };
  repo.resetWriteStats();
}
function resetFaults() {
  faultState = { counter: 0, rng: mulberry32(faults.fault_seed), downUntil: 0 };
}
const bump = (obj, key) => (obj[key] = (obj[key] ?? 0) + 1);
resetStats();
resetFaults();

/** Small deterministic PRNG so FAULT_503_RATE hits the same requests on every run. */
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** All FHIR requests run one at a time: keeps transactions atomic and reads consistent. */
let queue = Promise.resolve();
function serialized(fn) {
  const p = queue.then(fn);
  queue = p.catch(() => {});
  return p;
}

// --------------------------------------------------------------- helpers
const outcome = (code, text, expression) => ({
  resourceType: 'OperationOutcome',
  issue: [{ severity: 'error', code, details: { text }, ...(expression ? { expression: [expression] } : {}) }],
});

/** Medplum reports "conditional ... matched multiple resources" in bundles as 400; FHIR says 412. */
function remapMultipleMatches(oo) {
  const text = oo?.issue?.[0]?.details?.text ?? '';
  if (!/matched multiple resources/.test(text)) return oo;
  return { ...oo, id: 'multiple-matches', issue: oo.issue.map((i) => ({ ...i, code: 'multiple-matches' })) };
}

/**
 * Rewrite a search query for the router: "subject:Patient=123" -> "subject=Patient/123"
 * (Medplum drops the type modifier), explicit _count (default/max page size), and with
 * "Prefer: handling=lenient" unknown parameters are dropped instead of rejected.
 */
function normalizeSearchParams(type, params, lenient) {
  const out = new URLSearchParams();
  const known = (name) => CONTROL_PARAMS.has(name) || Boolean(globalSchema.types[type]?.searchParams?.[name]);
  for (const [key, value] of params) {
    const [name, modifier] = key.split(':');
    if (lenient && !known(name)) continue;
    if (modifier && isKnownResourceType(modifier) && !value.includes('/')) out.append(name, `${modifier}/${value}`);
    else out.append(key, value);
  }
  if (out.get('_summary') !== 'count') {
    const count = Math.min(Math.max(0, num(out.get('_count'), config.defaultPageSize)), config.maxPageSize);
    out.set('_count', String(count));
  }
  return out;
}

/** Bundle.link self/first/previous/next for a searchset (absolute URLs on our base). */
function addSearchLinks(bundle, type, params) {
  const count = num(params.get('_count'), config.defaultPageSize);
  const offset = num(params.get('_offset'), 0);
  const page = (off) => {
    const p = new URLSearchParams([...params].filter(([k]) => k !== '_offset'));
    p.set('_offset', String(off));
    return `${baseUrl}/${type}?${p}`;
  };
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  bundle.link = [{ relation: 'self', url: page(offset) }, { relation: 'first', url: page(0) }];
  if (offset > 0 && count > 0) bundle.link.push({ relation: 'previous', url: page(Math.max(0, offset - count)) });
  if (count > 0 && offset + matches < (bundle.total ?? 0)) bundle.link.push({ relation: 'next', url: page(offset + count) });
}

/** fullUrl on every entry that carries a resource with an id. */
function addFullUrls(bundle) {
  for (const e of bundle.entry ?? []) {
    if (e.resource?.id && !e.fullUrl) e.fullUrl = `${baseUrl}/${e.resource.resourceType}/${e.resource.id}`;
  }
}

/** Split "Observation?code=x" into ["Observation", URLSearchParams]. */
function splitUrl(url) {
  const i = url.indexOf('?');
  return i < 0 ? [url, new URLSearchParams()] : [url.slice(0, i), new URLSearchParams(url.slice(i + 1))];
}

function capabilityStatement() {
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type',
    ...(history.type_level ? ['history-type'] : [])];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: stats.started_at,
    kind: 'instance',
    software: { name: 'fhir-adapter test FHIR server (Medplum fhir-router)', version: MEDPLUM_VERSION },
    implementation: { description: 'In-memory FHIR R4 test server', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        resource: resourceTypes().map((type) => ({
          type,
          interaction: interactions.map((code) => ({ code })),
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchParam: Object.entries(globalSchema.types[type]?.searchParams ?? {}).map(([name, sp]) => ({
            name,
            type: sp.type,
            ...(sp.url ? { definition: sp.url } : {}),
          })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        operation: bulk.operations(),
      },
    ],
  };
}

// ---------------------------------------------------------- FHIR handling

/** Handle one request below the FHIR base. Returns { status, body, headers }. */
async function handleFhir(method, rel, params, body, headers) {
  const segments = rel.split('/').filter(Boolean);
  const type = segments[0];
  const prefer = String(headers.prefer ?? '');

  if (method === 'GET' && rel === 'metadata') return { status: 200, body: capabilityStatement() };
  const bulkAnswer = bulk.handle(method, rel, params, headers); // Bulk Data $export (bulk-export.mjs)
  if (bulkAnswer) return bulkAnswer;
  if (type && !type.startsWith('$') && !isKnownResourceType(type)) {
    return { status: 404, body: outcome('not-supported', `Unknown resource type: ${type}`) };
  }
  if (method === 'GET' && segments.length === 2 && segments[1] === '_history' && history.type_level) {
    return typeHistory(type, params);
  }
  if (segments[1] === '_history' || (!type && params.has('_type'))) {
    return { status: 400, body: outcome('not-supported', 'Type/system-level history and search are not supported') };
  }
  // POST Type/_search (form body) is served as GET Type?params
  if (method === 'POST' && segments.length === 2 && segments[1] === '_search') {
    for (const [k, v] of new URLSearchParams(typeof body === 'string' ? body : '')) params.append(k, v);
    return handleFhir('GET', type, params, undefined, headers);
  }
  const isSearch = method === 'GET' && segments.length === 1;
  if (isSearch) params = normalizeSearchParams(type, params, /handling=lenient/.test(prefer));

  const isBundle = method === 'POST' && !type;
  if (isBundle) return handleBundle(body, headers);

  const qs = params.toString();
  const [oo, resource] = await router.handleRequest(
    { method, url: rel + (qs ? `?${qs}` : ''), pathname: '', body, params: {}, query: {}, headers, config: {} },
    repo
  );
  let status = getStatus(oo);
  if (status >= 400 || !resource) return { status, body: oo };
  if (status === 200 && repo.wasCreated(resource)) status = 201; // PUT Type/id that created it
  if (resource.resourceType === 'Bundle') {
    if (isSearch) addSearchLinks(resource, type, params);
    addFullUrls(resource);
  }
  const out = { status, body: resource, headers: {} };
  if (resource.meta?.versionId && resource.resourceType !== 'Bundle') {
    out.headers.ETag = `W/"${resource.meta.versionId}"`;
    out.headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201) {
      out.headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  if (/return=minimal/.test(prefer) && method !== 'GET') out.body = undefined;
  else if (/return=OperationOutcome/.test(prefer) && method !== 'GET') out.body = oo;
  return out;
}

/**
 * batch / transaction Bundles. Medplum's BatchProcessor runs every entry; it is told
 * to use batch semantics ("transactions: false") so its production limits (50 updates,
 * 8 entries when one is conditional) do not apply. Transaction atomicity comes from
 * the repository journal: any failed entry rolls back all writes of the Bundle, and
 * the failure is returned as the response (status + OperationOutcome).
 */
async function handleBundle(bundle, headers) {
  if (bundle?.resourceType !== 'Bundle') return { status: 400, body: outcome('invalid', 'Expected a Bundle') };
  const entries = bundle.entry ?? [];
  if (config.maxBundleEntries > 0 && entries.length > config.maxBundleEntries) {
    const text = `Bundle has ${entries.length} entries; this server accepts at most ${config.maxBundleEntries}`;
    return { status: 413, body: outcome('too-costly', text) };
  }
  for (const e of entries) {
    const url = e.request?.url ?? '';
    const [path, params] = splitUrl(url);
    bump(stats.bundle_entries.by_method, e.request?.method ?? '?');
    bump(stats.bundle_entries.by_resource_type, path.split('/')[0] || e.resource?.resourceType || '?');
    stats.bundle_entries.total++;
    if (e.request?.method === 'GET' && path && !path.includes('/') && isKnownResourceType(path)) {
      e.request.url = `${path}?${normalizeSearchParams(path, params, false)}`;
    }
  }
  const isTransaction = bundle.type === 'transaction';
  if (!isTransaction) return runBundle(bundle, entries, headers, false);
  repo.begin();
  try {
    const out = await runBundle(bundle, entries, headers, true);
    if (out.status >= 400) repo.rollback();
    else repo.commit();
    return out;
  } catch (err) {
    repo.rollback();
    throw err;
  }
}

/** Run the Bundle through Medplum's BatchProcessor and finish the response entries. */
async function runBundle(bundle, entries, headers, isTransaction) {
  const [oo, result] = await router.handleRequest(
    { method: 'POST', url: '', pathname: '', body: bundle, params: {}, query: {}, headers, config: { transactions: false } },
    repo
  );
  if (!isOk(oo)) return { status: getStatus(oo), body: oo };
  const minimal = /return=minimal/.test(String(headers.prefer ?? ''));
  for (const [i, e] of (result.entry ?? []).entries()) {
    if (e.response?.status === '200' && repo.wasCreated(e.resource)) e.response.status = '201';
    if (e.response?.outcome && !isOk(e.response.outcome)) {
      e.response.outcome = remapMultipleMatches(e.response.outcome);
      e.response.status = String(getStatus(e.response.outcome));
    }
    if (isTransaction && Number(e.response?.status) >= 400) {
      // First failed entry fails the transaction (the caller rolls back).
      const failed = e.response.outcome ?? outcome('processing', 'Transaction entry failed');
      failed.issue = failed.issue.map((iss) => ({ ...iss, diagnostics: `Bundle.entry[${i}]: ${iss.details?.text ?? ''}` }));
      return { status: Number(e.response.status), body: failed };
    }
    const res = e.resource;
    if (res?.resourceType === 'Bundle' && res.type === 'searchset') {
      const [path, params] = splitUrl(entries[i].request.url);
      addSearchLinks(res, path, params);
      addFullUrls(res);
    }
    if (res?.id && Number(e.response?.status) < 300) {
      e.fullUrl ??= `${baseUrl}/${res.resourceType}/${res.id}`;
      if (res.meta?.versionId) {
        e.response.etag = `W/"${res.meta.versionId}"`;
        e.response.lastModified = res.meta.lastUpdated;
        if (e.response.location) e.response.location += `/_history/${res.meta.versionId}`;
      }
    }
    if (minimal && entries[i]?.request?.method !== 'GET') delete e.resource;
  }
  return { status: 200, body: result };
}

/** GET [type]/_history?_since=&_count=&_offset=: a history Bundle, newest first, paged with next links. */
function typeHistory(type, params) {
  const unknown = [...params.keys()].filter((k) => !['_since', '_count', '_offset'].includes(k));
  if (unknown.length) return { status: 400, body: outcome('not-supported', `Type-level history supports _since and _count only, not ${unknown.join(', ')}`) };
  const sinceText = params.get('_since');
  const sinceMs = sinceText ? Date.parse(sinceText) : null;
  if (sinceText && !Number.isFinite(sinceMs)) return { status: 400, body: outcome('invalid', `_since is not an instant: ${sinceText}`) };
  const count = Math.min(Math.max(1, num(params.get('_count'), config.defaultPageSize)), config.maxPageSize);
  const offset = Math.max(0, num(params.get('_offset'), 0));
  const all = repo.typeHistory(type, sinceMs);
  const page = (off) => {
    const p = new URLSearchParams([...params].filter(([k]) => k !== '_offset' && k !== '_count'));
    p.set('_count', String(count));
    p.set('_offset', String(off));
    return `${baseUrl}/${type}/_history?${p}`;
  };
  const link = [{ relation: 'self', url: page(offset) }, { relation: 'first', url: page(0) }];
  if (offset + count < all.length) link.push({ relation: 'next', url: page(offset + count) });
  return { status: 200, body: { resourceType: 'Bundle', type: 'history', total: all.length, link, entry: all.slice(offset, offset + count) } };
}

// ------------------------------------------------------------------ admin
function handleAdmin(method, path, params, body) {
  if (method === 'GET' && path === '/admin/health') return { status: 200, body: { status: 'ok' } };
  if (path === '/admin/bulk') return bulk.admin(method, body);
  if (method === 'POST' && path === '/admin/reset') {
    const scope = params.get('scope') ?? 'all';
    if (scope === 'all') {
      repo.reset();
      history.type_level = config.historyType;
    }
    resetStats();
    resetFaults();
    bulk.reset();
    return { status: 200, body: { status: 'ok', scope } };
  }
  if (method === 'GET' && path === '/admin/stats') {
    const w = repo.writeStats;
    const resources = Object.fromEntries([...repo.resources].map(([t, m]) => [t, m.size]).filter(([, n]) => n > 0));
    return {
      status: 200,
      body: {
        ...stats,
        writes: { total: w.created + w.updated + w.deleted, ...w },
        resources,
        resources_total: Object.values(resources).reduce((a, b) => a + b, 0),
        memory_mb: Math.round(process.memoryUsage().heapUsed / 1048576),
      },
    };
  }
  if (path === '/admin/history' && (method === 'GET' || method === 'POST')) {
    if (method === 'POST' && body && 'type_level' in body) history.type_level = Boolean(body.type_level);
    return { status: 200, body: { ...history } };
  }
  if (path === '/admin/faults' && (method === 'GET' || method === 'POST')) {
    if (method === 'POST') {
      for (const k of Object.keys(faults)) {
        if (body && k in body) faults[k] = ['fault_retry_after', 'fault_match', 'fault_slow_only', 'fault_slow_phase'].includes(k) ? String(body[k]) : Number(body[k]);
      }
      resetFaults();
    }
    return { status: 200, body: { ...faults } };
  }
  return { status: 404, body: outcome('not-found', `No admin endpoint ${method} ${path}`) };
}

// ------------------------------------------------------------------- HTTP
function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > config.maxBodyBytes) reject(new OperationOutcomeError(outcome('too-costly', 'Request body too large')));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, { status, body, headers = {}, raw, contentType: bodyType }, contentType = FHIR_JSON) {
  const payload = raw ?? (body === undefined ? '' : JSON.stringify(body));
  res.writeHead(status, { ...(payload.length ? { 'Content-Type': bodyType ?? contentType } : {}), ...headers });
  res.end(payload);
}

async function onRequest(req, res) {
  const started = Date.now();
  const url = new URL(req.url, 'http://localhost');
  const method = req.method;
  const text = await readBody(req);
  let result;

  if (url.pathname.startsWith('/admin/')) {
    let json;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      return send(res, { status: 400, body: { error: 'invalid JSON' } }, 'application/json');
    }
    return send(res, handleAdmin(method, url.pathname, url.searchParams, json), 'application/json');
  }
  if (method === 'POST' && url.pathname === '/auth/token') {
    // a stand-in token endpoint: any client_credentials request gets a fresh token; with TOKEN_CLIENT_ID and
    // TOKEN_CLIENT_SECRET set, only a client authenticating with that secret (RFC 6749 2.3.1: HTTP Basic of the
    // form-encoded id and secret, or both in the form) — a SMART client assertion is never verified
    const form = new URLSearchParams(text);
    if (form.get('grant_type') !== 'client_credentials') {
      return send(res, { status: 400, body: { error: 'unsupported_grant_type' } }, 'application/json');
    }
    if (config.tokenClientSecret) {
      const decode = (v) => {
        try {
          return decodeURIComponent(v.replace(/\+/g, ' '));
        } catch {
          return null; // not form-encoded as RFC 6749 2.3.1 asks: no client
        }
      };
      let client = null;
      const basic = /^Basic\s+(.+)$/i.exec(String(req.headers.authorization ?? ''));
      if (basic) {
        const pair = Buffer.from(basic[1], 'base64').toString('utf8');
        const at = pair.indexOf(':');
        client = at < 0 ? null : { id: decode(pair.slice(0, at)), secret: decode(pair.slice(at + 1)), method: 'client_secret_basic' };
      } else if (form.has('client_secret')) {
        client = { id: form.get('client_id'), secret: form.get('client_secret'), method: 'client_secret_post' };
      }
      if (!client || client.id !== config.tokenClientId || client.secret !== config.tokenClientSecret) {
        return send(res, { status: 401, body: { error: 'invalid_client', error_description: 'client authentication failed' }, headers: { 'WWW-Authenticate': 'Basic realm="token"' } }, 'application/json');
      }
      stats.token_auth = client.method;
    }
    stats.tokens_issued++;
    return send(res, { status: 200, body: { access_token: `test-token-${stats.tokens_issued}`, token_type: 'bearer', expires_in: 300, scope: 'system/*.rs' } }, 'application/json');
  }
  if (url.pathname !== config.basePath && !url.pathname.startsWith(config.basePath + '/')) {
    return send(res, { status: 404, body: outcome('not-found', `Not a FHIR endpoint; base is ${baseUrl}`) });
  }
  const rel = url.pathname.slice(config.basePath.length).replace(/^\/+/, '');

  // Counters, then injected faults (faulted requests have no side effects).
  stats.requests.total++;
  bump(stats.requests.by_method, method);
  bump(stats.requests.by_resource_type, rel.split('/')[0] || (method === 'POST' ? 'Bundle' : 'system'));
  const n = ++faultState.counter;
  const now = Date.now();
  if (faults.fault_down_after > 0 && n === faults.fault_down_after) {
    faultState.downUntil = faults.fault_down_ms > 0 ? now + faults.fault_down_ms : Infinity;
  }
  const down = now < faultState.downUntil;
  if (down || (faults.fault_reset_every > 0 && n % faults.fault_reset_every === 0)) {
    // connection reset before anything is processed: the client sees the connection dropped, no answer
    stats.faults[down ? 'down' : 'reset']++;
    bump(stats.requests.by_status, 'reset');
    if (config.logRequests) console.error(`${method} ${req.url} -> connection reset${down ? ' (down)' : ''}`);
    req.socket.resetAndDestroy?.() ?? req.socket.destroy();
    return;
  }
  const bundlePost = method === 'POST' && !rel;
  let holdAnswer = 0; // ms the answer is held after processing (fault_slow_phase 'after')
  if (faults.fault_slow_every > 0 && n % faults.fault_slow_every === 0 && (faults.fault_slow_only !== 'transaction' || bundlePost)) {
    stats.faults.slow++;
    if (faults.fault_slow_phase === 'after') holdAnswer = faults.fault_slow_ms;
    else await new Promise((resolve) => setTimeout(resolve, faults.fault_slow_ms));
  }
  const bearer = /^Bearer\s+test-token-(\d+)$/.exec(String(req.headers.authorization ?? ''));
  if (config.requireToken && rel !== 'metadata' && !(bearer && Number(bearer[1]) >= 1 && Number(bearer[1]) <= stats.tokens_issued)) {
    bump(stats.requests.by_status, 401);
    result = { status: 401, body: outcome('login', 'No valid access token'), headers: { 'WWW-Authenticate': 'Bearer error="invalid_token"' } };
  } else if (faults.fault_401_after > 0 && n >= faults.fault_401_after && n < faults.fault_401_after + faults.fault_401_count) {
    stats.faults[401]++;
    result = { status: 401, body: outcome('login', 'Injected fault: access token expired'), headers: { 'WWW-Authenticate': 'Bearer error="invalid_token"' } };
  } else if (faults.fault_match && req.url.includes(faults.fault_match)) {
    stats.faults.match++;
    result = { status: 503, body: outcome('transient', 'Injected fault: this request always fails') };
  } else if (faults.fault_429_every > 0 && n % faults.fault_429_every === 0) {
    stats.faults[429]++;
    result = { status: 429, body: outcome('throttled', 'Injected fault: too many requests'), headers: { 'Retry-After': String(faults.fault_retry_after) } };
  } else if (faults.fault_503_rate > 0 && faultState.rng() < faults.fault_503_rate) {
    stats.faults[503]++;
    result = { status: 503, body: outcome('transient', 'Injected fault: service unavailable') };
  } else {
    let body;
    const ctype = String(req.headers['content-type'] ?? '');
    try {
      body = !text ? undefined : ctype.includes('x-www-form-urlencoded') ? text : JSON.parse(text);
    } catch (err) {
      body = err;
    }
    if (body instanceof Error) {
      result = { status: 400, body: outcome('structure', `Request body is not valid JSON: ${body.message}`) };
    } else {
      const interaction = !rel && method === 'POST' ? body?.type ?? 'batch' : rel === 'metadata' ? 'capabilities' : router.find(method, rel)?.data?.interaction ?? 'unknown';
      bump(stats.requests.by_interaction, interaction);
      result = await serialized(() => handleFhir(method, rel, new URLSearchParams(url.search), body, req.headers));
    }
  }
  bump(stats.requests.by_status, String(result.status));
  if (holdAnswer > 0) await new Promise((resolve) => setTimeout(resolve, holdAnswer)); // committed, answered late
  if (config.logRequests) console.error(`${method} ${req.url} -> ${result.status} (${Date.now() - started} ms)`);
  send(res, result);
}

const server = http.createServer((req, res) => {
  // node's own Date header ignores the shift, and is formatted once a second by a timer (late after a long
  // synchronous transaction): the time of this answer instead
  res.setHeader('Date', new Date().toUTCString());
  onRequest(req, res).catch((err) => {
    const oo = err instanceof OperationOutcomeError ? err.outcome : normalizeOperationOutcome(err);
    if (!(err instanceof OperationOutcomeError)) console.error(err);
    if (!res.headersSent) send(res, { status: getStatus(oo) === 400 && !(err instanceof OperationOutcomeError) ? 500 : getStatus(oo), body: oo });
    else res.destroy();
  });
});
// Longer than clients' keep-alive expiry (httpx: 5 s) so the client always closes first.
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
server.requestTimeout = 0;

server.on('error', (err) => {
  console.error(`fhir test server: ${err.message}`);
  process.exit(1);
});
server.listen(config.port, config.host, () => {
  const { port } = server.address();
  baseUrl = `http://${config.host}:${port}${config.basePath}`;
  repo.baseUrl = baseUrl;
  process.stdout.write(`LISTENING ${baseUrl}\n`);
  console.error(`fhir test server (Medplum ${MEDPLUM_VERSION}, node ${process.version}) at ${baseUrl}`);
});

// Graceful stop: refuse new connections, let in-flight requests finish (max 5 s).
let stopping = false;
function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  console.error(`fhir test server: ${signal}, stopping`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => {
    server.closeAllConnections();
    process.exit(0);
  }, 5000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (config.exitOnStdinClose) {
  // The pytest fixture keeps our stdin open; if pytest dies, stdin closes and we exit.
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.resume();
}

// FHIR Bulk Data Access (IG v2.0.0) $export for the test server: kick-off, status polling with
// Retry-After and X-Progress, a manifest, NDJSON files (gzip'd when the client accepts it), error files,
// deleted[] files (with _since: one transaction Bundle of DELETE entries per line), DELETE of a job. Jobs live in memory; the export is taken at kick-off (transactionTime).
//
//   GET [base]/Patient/$export | [base]/Group/[id]/$export | [base]/$export   (Prefer: respond-async)
//       _type, _since, _outputFormat; _typeFilter is refused with 400 unless typeFilter is 'ignore'
//   GET [base]/$export-status/[job]      202 + Retry-After + X-Progress until done, then 200 + manifest
//   DELETE [base]/$export-status/[job]   202; the job and its files are gone (404 afterwards)
//   GET [base]/$export-file/[job]/[n]    application/fhir+ndjson (Content-Encoding: gzip when accepted)
//
// Knobs (POST /admin/bulk with a JSON object; GET shows them):
//   polls_until_done (1)   status requests answered 202 before the manifest
//   retry_after ('0')      Retry-After on 202
//   requires_token (false) manifest requiresAccessToken; files then need the same Authorization as kick-off
//   relative_urls (false)  file URLs in the manifest relative to the base (some servers write them so)
//   files_per_type (1)     NDJSON files per resource type (Type parts: N.Type.ndjson names)
//   error_text ('')        when set, the manifest lists an error file with one OperationOutcome saying it
//   type_filter ('reject') _typeFilter: 'reject' (400) or 'ignore'
//   group_404 (false)      Group/[id]/$export answered 404 as if the server knew no Group
//   fail_file (-1), fail_file_times (0)   file number fail_file answers 503 the next fail_file_times times
//   extra_types ([])       a hostile manifest: one more output entry per string, with that string as its type
//                          (NUL, very long, a path with ../), its file one Basic resource
//   deleted (true)         with _since: the manifest's deleted[] lists the resources deleted since then (of the
//                          types asked for, of the Group's members by their last version); false: left out
import { gzipSync } from 'node:zlib';
import { randomUUID } from 'node:crypto';

const PATIENT_REFS = ['subject', 'patient', 'individual'];
const SHARED = new Set(['Medication', 'Organization', 'Location', 'Specimen', 'Practitioner']);

export function createBulkExport({ repo, baseUrl, outcome, isKnownResourceType }) {
  const knobs = {
    polls_until_done: 1, retry_after: '0', requires_token: false, relative_urls: false, files_per_type: 1,
    error_text: '', type_filter: 'reject', group_404: false, fail_file: -1, fail_file_times: 0, extra_types: [],
    deleted: true,
  };
  const info = (text) => ({ resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', details: { text } }] });
  const jobs = new Map();
  const counters = { kickoffs: 0, status: 0, files: 0, deletes: 0 };

  const patientOf = (r) => {
    if (r.resourceType === 'Patient') return r.id;
    for (const key of PATIENT_REFS) {
      const ref = r[key]?.reference;
      if (typeof ref === 'string' && ref.includes('Patient/')) return ref.split('Patient/').pop().split('/')[0];
    }
    return undefined;
  };

  function kickoff(level, groupId, params, headers) {
    counters.kickoffs++;
    if (!String(headers.prefer ?? '').includes('respond-async')) {
      return { status: 400, body: outcome('invalid', 'Prefer: respond-async is required for $export') };
    }
    const format = params.get('_outputFormat');
    if (format && !['application/fhir+ndjson', 'application/ndjson', 'ndjson'].includes(format)) {
      return { status: 400, body: outcome('not-supported', `_outputFormat ${format} is not supported`) };
    }
    if (params.get('_typeFilter') && knobs.type_filter === 'reject') {
      return { status: 400, body: outcome('not-supported', '_typeFilter is not supported by this server') };
    }
    const types = (params.get('_type') ?? '').split(',').filter(Boolean);
    const unknown = types.filter((t) => !isKnownResourceType(t));
    if (unknown.length) return { status: 400, body: outcome('invalid', `_type: unknown resource type ${unknown[0]}`) };
    let members = null;
    if (level === 'group') {
      const group = repo.resources.get('Group')?.get(groupId);
      if (!group || knobs.group_404) return { status: 404, body: outcome('not-found', `Group/${groupId} is not known`) };
      members = new Set((group.member ?? []).map((m) => m.entity?.reference?.split('/').pop()).filter(Boolean));
    }
    const since = params.get('_since') ? Date.parse(params.get('_since')) : null;
    const transactionTime = new Date().toISOString();
    const byType = new Map();
    for (const [type, items] of repo.resources) {
      if (types.length && !types.includes(type)) continue;
      for (const r of items.values()) {
        if (since !== null && Date.parse(r.meta?.lastUpdated ?? 0) <= since) continue;
        const pid = patientOf(r);
        if (pid === undefined && !SHARED.has(type) && level !== 'system') continue;
        if (members && pid !== undefined && !members.has(pid)) continue;
        if (!byType.has(type)) byType.set(type, []);
        byType.get(type).push(JSON.stringify(r));
      }
    }
    const id = randomUUID();
    const files = [];
    for (const [type, lines] of [...byType].sort(([a], [b]) => a.localeCompare(b))) {
      const parts = Math.max(1, Math.min(knobs.files_per_type, lines.length));
      const size = Math.ceil(lines.length / parts);
      for (let i = 0; i < parts; i++) {
        const chunk = lines.slice(i * size, (i + 1) * size);
        if (chunk.length) files.push({ type, body: chunk.join('\n') + '\n', count: chunk.length, name: `${files.length + 1}.${type}.ndjson` });
      }
    }
    for (const [i, type] of (knobs.extra_types ?? []).entries()) {
      files.push({ type, body: JSON.stringify({ resourceType: 'Basic', id: `extra-${i}` }) + '\n', count: 1, name: `extra-${i}.ndjson` });
    }
    const gone = [];
    if (since !== null && knobs.deleted) {
      for (const [key, { at, last }] of [...repo.deletedAt].sort(([a], [b]) => a.localeCompare(b))) {
        const type = key.split('/')[0];
        if (Date.parse(at) <= since || (types.length && !types.includes(type))) continue;
        const pid = patientOf(last);
        if (members && pid !== undefined && !members.has(pid)) continue;
        gone.push(JSON.stringify({
          resourceType: 'Bundle', type: 'transaction', meta: { lastUpdated: at },
          entry: [{ request: { method: 'DELETE', url: key } }],
        }));
      }
    }
    const deleted = gone.length ? [{ type: 'Bundle', body: gone.join('\n') + '\n', count: gone.length, name: 'deleted.ndjson' }] : [];
    const errors = knobs.error_text
      ? [{ type: 'OperationOutcome', body: JSON.stringify(outcome('processing', knobs.error_text)) + '\n', name: 'errors.ndjson' }]
      : [];
    const request = `${baseUrl()}/${level === 'group' ? `Group/${groupId}/` : level === 'patient' ? 'Patient/' : ''}$export?${params}`;
    jobs.set(id, { polls: 0, files, errors, deleted, transactionTime, request, auth: headers.authorization ?? null });
    return { status: 202, body: info('export accepted'), headers: { 'Content-Location': `${baseUrl()}/$export-status/${id}` } };
  }

  function fileUrl(id, n) {
    const rel = `$export-file/${id}/${n}`;
    return knobs.relative_urls ? rel : `${baseUrl()}/${rel}`;
  }

  function status(id, method) {
    const job = jobs.get(id);
    if (!job) return { status: 404, body: outcome('not-found', `No export job ${id} (deleted or expired)`) };
    if (method === 'DELETE') {
      counters.deletes++;
      jobs.delete(id);
      return { status: 202, body: info('export job deleted') };
    }
    counters.status++;
    if (job.polls < knobs.polls_until_done) {
      job.polls++;
      const pct = Math.round((100 * job.polls) / (knobs.polls_until_done + 1));
      return { status: 202, headers: { 'Retry-After': String(knobs.retry_after), 'X-Progress': `in progress (${pct}%)` } };
    }
    return {
      status: 200,
      body: {
        transactionTime: job.transactionTime,
        request: job.request,
        requiresAccessToken: Boolean(knobs.requires_token),
        output: job.files.map((f, i) => ({ type: f.type, url: fileUrl(id, i), count: f.count })),
        error: job.errors.map((f, i) => ({ type: 'OperationOutcome', url: fileUrl(id, `error-${i}`) })),
        deleted: job.deleted.map((f, i) => ({ type: 'Bundle', url: fileUrl(id, `deleted-${i}`), count: f.count })),
      },
      contentType: 'application/json',
    };
  }

  function file(id, n, headers) {
    const job = jobs.get(id);
    if (!job) return { status: 404, body: outcome('not-found', `No export job ${id}`) };
    const f = n.startsWith('error-') ? job.errors[Number(n.slice(6))]
      : n.startsWith('deleted-') ? job.deleted[Number(n.slice(8))] : job.files[Number(n)];
    if (!f) return { status: 404, body: outcome('not-found', `No file ${n} in export ${id}`) };
    if (String(knobs.fail_file) === n && knobs.fail_file_times > 0) {
      knobs.fail_file_times--;
      return { status: 503, body: outcome('transient', 'Injected fault: file temporarily unavailable') };
    }
    if (knobs.requires_token && (headers.authorization ?? null) !== job.auth) {
      return { status: 401, body: outcome('login', 'this file requires the access token of the export') };
    }
    counters.files++;
    const gzip = String(headers['accept-encoding'] ?? '').includes('gzip');
    const raw = gzip ? gzipSync(Buffer.from(f.body)) : Buffer.from(f.body);
    return { status: 200, raw, contentType: 'application/fhir+ndjson', headers: gzip ? { 'Content-Encoding': 'gzip' } : {} };
  }

  return {
    knobs,
    counters,
    reset() {
      jobs.clear();
      for (const k of Object.keys(counters)) counters[k] = 0;
    },
    /** The answer to a request below the FHIR base, or null when it is not a Bulk Data request. */
    handle(method, rel, params, headers) {
      const seg = rel.split('/').filter(Boolean);
      if (method === 'GET' && rel === '$export') return kickoff('system', null, params, headers);
      if (method === 'GET' && seg[0] === 'Patient' && seg[1] === '$export' && seg.length === 2) return kickoff('patient', null, params, headers);
      if (method === 'GET' && seg[0] === 'Group' && seg[2] === '$export' && seg.length === 3) return kickoff('group', seg[1], params, headers);
      if (seg[0] === '$export-status' && seg.length === 2 && (method === 'GET' || method === 'DELETE')) return status(seg[1], method);
      if (method === 'GET' && seg[0] === '$export-file' && seg.length === 3) return file(seg[1], seg[2], headers);
      return null;
    },
    admin(method, body) {
      if (method === 'POST') {
        for (const k of Object.keys(knobs)) if (body && k in body) knobs[k] = body[k];
        if (body?.reset) this.reset();
      }
      return { status: 200, body: { ...knobs, counters: { ...counters }, jobs: jobs.size } };
    },
    /** CapabilityStatement.rest.operation entries. */
    operations: () => [
      { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' },
      { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export' },
      { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export' },
    ],
  };
}

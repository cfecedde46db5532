// TestRepository: Medplum's MemoryRepository plus the pieces a test server needs.
//
// MemoryRepository (from @medplum/fhir-router 4.5.2) stores resources in Maps and
// keeps every version in a history Map. On top of it this class adds:
//  * validation of every write (create, update, patch, conditional, in bundles)
//  * sequential meta.versionId ("1", "2", ...) instead of random UUIDs, and no new
//    version for an update that does not change the content (like HAPI/Medplum server)
//  * search: hash indexes for common params (identifier, patient, subject, code,
//    encounter, _id), default/maximum page size, _sort, _include/_revinclude,
//    _elements; the base class scans and deep-clones every match before paging
//  * an undo journal so a transaction Bundle is all-or-nothing (the base class's
//    withTransaction() is a no-op)
//  * 410 Gone for deleted resources (their instance history stays readable, under a DELETE entry), a
//    non-mutating history (the base reverses its history array in place on every call) and write counters
//    for /admin/stats.
import {
  OperationOutcomeError,
  badRequest,
  convertToSearchableReferences,
  convertToSearchableTokens,
  deepClone,
  evalFhirPathTyped,
  getReferenceString,
  globalSchema,
  gone,
  isResourceType,
  matchesSearchRequest,
  notFound,
  parseFhirPath,
  splitSearchOnComma,
  toTypedValue,
} from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';
import { prepareReferences, validateFhirResource } from './fhir-setup.mjs';

/** Search parameters kept in hash indexes (when the resource type defines them). */
const INDEXED_PARAMS = ['identifier', 'patient', 'subject', 'code', 'encounter'];
const WRITE_KINDS = ['created', 'updated', 'deleted', 'unchanged'];
/**
 * Search parameter types and modifiers/prefixes (as parsed by Medplum) that Medplum's
 * in-memory matcher evaluates correctly. Anything else is rejected with 400 instead of
 * silently matching nothing (number/quantity) or the wrong thing (:text, :exact, ...).
 */
const PRESENCE = ['missing', 'present'];
const SUPPORTED_OPERATORS = {
  token: ['eq', 'not', ...PRESENCE],
  reference: ['eq', 'not', ...PRESENCE],
  string: ['eq', 'contains', ...PRESENCE], // note: Medplum matches "eq" as case-insensitive contains
  uri: ['eq', ...PRESENCE],
  date: ['eq', 'ne', 'gt', 'lt', 'ge', 'le', 'sa', 'eb', 'ap', ...PRESENCE],
};

export class TestRepository extends MemoryRepository {
  constructor({ defaultPageSize = 20, maxPageSize = 1000, baseUrl = '' } = {}) {
    super();
    this.defaultPageSize = defaultPageSize;
    this.maxPageSize = maxPageSize;
    this.baseUrl = baseUrl; // set once the HTTP server knows its port
    this.indexDefs = new Map(); // type -> [{code, kind, ast}]
    this.createdResults = new WeakSet(); // results of writes that created a resource (for 201)
    this.reset();
  }

  /** True if `result` (as returned by a write) created the resource rather than updating it. */
  wasCreated(result) {
    return Boolean(result && typeof result === 'object' && this.createdResults.has(result));
  }

  /** Drop all data and counters (POST /admin/reset). */
  reset() {
    this.clear(); // base: resources + history
    this.indexes = new Map(); // type -> code -> key -> Set<id>
    this.deleted = new Map(); // type -> Set<id> (tombstones, for 410 Gone)
    this.deletedAt = new Map(); // 'Type/id' -> { at: ISO time of the deletion, last: the version deleted } (Bulk deleted[])
    this.journal = null; // undo log while a transaction Bundle is running
    this.resetWriteStats();
  }

  resetWriteStats() {
    this.writeStats = { created: 0, updated: 0, deleted: 0, unchanged: 0, by_resource_type: {} };
  }

  typeStore(type) {
    let m = this.resources.get(type);
    if (!m) this.resources.set(type, (m = new Map()));
    return m;
  }

  countWrite(kind, type, delta = 1) {
    this.writeStats[kind] += delta;
    const t = (this.writeStats.by_resource_type[type] ??= Object.fromEntries(WRITE_KINDS.map((k) => [k, 0])));
    t[kind] += delta;
  }

  // ----------------------------------------------------------------- writes

  /**
   * Every write lands here: POST, PUT (the base updateResource() calls
   * this.createResource()), PATCH, conditional create/update, bundle entries.
   * `options` is only passed on the create paths; `assignedId` is true when a
   * Bundle pre-assigned the id, otherwise a client-supplied id is ignored on create.
   */
  async createResource(resource, options) {
    const type = resource.resourceType;
    const id = (options && !options.assignedId ? undefined : resource.id) ?? this.generateId();
    const store = this.typeStore(type);
    const prev = store.get(id);
    const histLen = this.history.get(type)?.get(id)?.length ?? 0;
    const toStore = {
      ...deepClone(resource),
      id,
      meta: {
        ...resource.meta,
        versionId: String(histLen + 1),
        lastUpdated: new Date().toISOString(),
      },
    };
    const refIssues = prepareReferences(toStore, this.baseUrl);
    if (prev && !refIssues.length && sameContent(prev, toStore)) {
      // Same content as the stored (already validated) version: no new version.
      this.record({ kind: 'unchanged', type, id });
      return deepClone(prev);
    }
    validateFhirResource(toStore, refIssues); // throws OperationOutcomeError -> 400
    const result = await super.createResource(toStore); // stores a JSON copy + history entry
    if (!prev) this.createdResults.add(result); // lets the HTTP layer answer 201 for update-as-create
    this.reindex(type, prev, store.get(id));
    const wasDeleted = this.deleted.get(type)?.delete(id) ?? false;
    this.deletedAt.delete(`${type}/${id}`);
    this.record({ kind: prev ? 'updated' : 'created', type, id, prev, histLen, wasDeleted });
    return result;
  }

  async deleteResource(type, id) {
    const store = this.typeStore(type);
    const prev = store.get(id);
    if (!prev && this.deleted.get(type)?.has(id)) return; // deleting again is a no-op (200)
    if (!prev) throw new OperationOutcomeError(notFound);
    this.reindex(type, prev, undefined);
    store.delete(id);
    let tomb = this.deleted.get(type);
    if (!tomb) this.deleted.set(type, (tomb = new Set()));
    tomb.add(id);
    this.deletedAt.set(`${type}/${id}`, { at: new Date().toISOString(), last: prev });
    const histLen = this.history.get(type)?.get(id)?.length ?? 0;
    this.record({ kind: 'deleted', type, id, prev, histLen, wasDeleted: false });
  }

  async readResource(type, id) {
    const r = this.resources.get(type)?.get(id);
    if (!r) throw new OperationOutcomeError(this.deleted.get(type)?.has(id) ? gone : notFound);
    return deepClone(r);
  }

  /**
   * Newest version first; unlike the base class this does not reverse the stored array. A deleted resource's
   * history is its versions under a DELETE entry with request.url and no resource (FHIR R4 http.html#history:
   * the history of a deleted resource stays readable; HAPI answers so); one never stored: 404.
   */
  async readHistory(type, id) {
    const deletion = this.deletedAt.get(`${type}/${id}`);
    if (!deletion) await this.readResource(type, id);
    const versions = [...(this.history.get(type)?.get(id) ?? [])].reverse();
    const entry = versions.map((v) => ({ resource: deepClone(v) }));
    if (deletion) {
      entry.unshift({
        fullUrl: `${this.baseUrl}/${type}/${id}`,
        request: { method: 'DELETE', url: `${type}/${id}` },
        response: { status: '204 No Content', lastModified: deletion.at },
      });
    }
    return { resourceType: 'Bundle', type: 'history', total: entry.length, entry };
  }

  /**
   * Type-level history since `sinceMs` (ms; null: all), newest first: every stored version as a POST (version 1)
   * or PUT entry with the resource, every deletion as a DELETE entry with request.url and no resource (as FHIR
   * R4 http.html#history and HAPI write them). A deletion is listed while the resource stays deleted.
   */
  typeHistory(type, sinceMs) {
    const found = [];
    for (const [id, versions] of this.history.get(type) ?? []) {
      for (const v of versions) {
        const at = Date.parse(v.meta?.lastUpdated ?? '');
        if (sinceMs !== null && !(at >= sinceMs)) continue;
        const created = v.meta?.versionId === '1';
        found.push({
          at,
          entry: {
            fullUrl: `${this.baseUrl}/${type}/${id}`,
            resource: deepClone(v),
            request: { method: created ? 'POST' : 'PUT', url: created ? type : `${type}/${id}` },
            response: { status: created ? '201 Created' : '200 OK', etag: `W/"${v.meta?.versionId}"` },
          },
        });
      }
    }
    for (const [key, { at: when }] of this.deletedAt) {
      const [t, id] = key.split('/');
      const at = Date.parse(when);
      if (t !== type || (sinceMs !== null && !(at >= sinceMs))) continue;
      found.push({
        at,
        entry: { fullUrl: `${this.baseUrl}/${key}`, request: { method: 'DELETE', url: `${t}/${id}` }, response: { status: '204 No Content' } },
      });
    }
    return found.sort((a, b) => b.at - a.at).map((f) => f.entry);
  }

  // ------------------------------------------------------ transaction journal

  record(entry) {
    this.countWrite(entry.kind, entry.type);
    this.journal?.push(entry);
  }

  begin() {
    if (this.journal) throw new Error('nested transaction');
    this.journal = [];
  }

  commit() {
    this.journal = null;
  }

  /** Undo every write since begin(), newest first. */
  rollback() {
    const journal = this.journal ?? [];
    this.journal = null;
    for (const j of journal.reverse()) {
      this.countWrite(j.kind, j.type, -1);
      if (j.kind === 'unchanged') continue;
      const store = this.typeStore(j.type);
      this.reindex(j.type, store.get(j.id), j.prev);
      if (j.prev) store.set(j.id, j.prev);
      else store.delete(j.id);
      const hist = this.history.get(j.type);
      if (hist?.get(j.id)) {
        hist.get(j.id).length = j.histLen;
        if (j.histLen === 0) hist.delete(j.id);
      }
      if (j.kind === 'deleted') {
        this.deleted.get(j.type)?.delete(j.id);
        this.deletedAt.delete(`${j.type}/${j.id}`);
      }
      if (j.wasDeleted) this.deleted.get(j.type)?.add(j.id);
    }
  }

  // ------------------------------------------------------------------ indexes

  /** Index definitions for a type: parsed FHIRPath of the (trimmed) search param expression. */
  indexDefsFor(type) {
    let defs = this.indexDefs.get(type);
    if (!defs) {
      defs = [];
      for (const code of INDEXED_PARAMS) {
        const sp = globalSchema.types[type]?.searchParams?.[code];
        if (sp?.expression && (sp.type === 'token' || sp.type === 'reference')) {
          defs.push({ code, kind: sp.type, ast: parseFhirPath(sp.expression) });
        }
      }
      this.indexDefs.set(type, defs);
    }
    return defs;
  }

  /**
   * Index keys of one resource for one param. They are exactly the values
   * Medplum's matcher compares against: lower-cased token values, exact reference strings.
   */
  indexKeys(def, resource) {
    const values = evalFhirPathTyped(def.ast, [toTypedValue(resource)]);
    if (def.kind === 'reference') return new Set(convertToSearchableReferences(values));
    return new Set(convertToSearchableTokens(values).map((t) => t.value?.toLowerCase()).filter(Boolean));
  }

  /** Move a resource's index entries from `before` to `after` (either may be undefined). */
  reindex(type, before, after) {
    let byCode = this.indexes.get(type);
    if (!byCode) this.indexes.set(type, (byCode = new Map()));
    const id = (after ?? before)?.id;
    for (const def of this.indexDefsFor(type)) {
      let byKey = byCode.get(def.code);
      if (!byKey) byCode.set(def.code, (byKey = new Map()));
      const oldKeys = before ? this.indexKeys(def, before) : new Set();
      const newKeys = after ? this.indexKeys(def, after) : new Set();
      for (const k of oldKeys) {
        if (!newKeys.has(k)) {
          byKey.get(k)?.delete(id);
          if (byKey.get(k)?.size === 0) byKey.delete(k);
        }
      }
      for (const k of newKeys) {
        if (!oldKeys.has(k)) {
          let ids = byKey.get(k);
          if (!ids) byKey.set(k, (ids = new Set()));
          ids.add(id);
        }
      }
    }
  }

  /**
   * Candidate resources for a search: the smallest index hit among the equality
   * filters on indexed params (or _id); null means "scan the whole type".
   * Candidates are a superset; matchesSearchRequest() still checks every filter.
   */
  candidates(type, filters) {
    const store = this.resources.get(type) ?? new Map();
    let best = null;
    for (const f of filters) {
      if (f.operator !== 'eq') continue;
      let ids;
      if (f.code === '_id') {
        ids = new Set(splitSearchOnComma(f.value));
      } else {
        const def = this.indexDefsFor(type).find((d) => d.code === f.code);
        if (!def) continue;
        const byKey = this.indexes.get(type)?.get(f.code);
        ids = new Set();
        for (const v of splitSearchOnComma(f.value)) {
          const key = def.kind === 'reference' ? v : (v.includes('|') ? v.split('|')[1] : v).toLowerCase();
          if (!key) {
            ids = null; // "system|" matches any code of a system: not indexable
            break;
          }
          for (const id of byKey?.get(key) ?? []) ids.add(id);
        }
      }
      if (ids && (!best || ids.size < best.size)) best = ids;
    }
    if (!best) return null;
    return [...best].map((id) => store.get(id)).filter(Boolean);
  }

  // ------------------------------------------------------------------- search

  /**
   * Reference filters: a bare id ("patient=123") or an absolute URL on our own base
   * is turned into "Type/id" for each target type of the parameter, because the
   * matcher compares reference strings exactly.
   */
  normalizeFilter(type, f) {
    const sp = globalSchema.types[type]?.searchParams?.[f.code];
    if (sp?.type !== 'reference' || !['eq', 'ne', 'not'].includes(f.operator)) return f;
    const values = splitSearchOnComma(f.value).flatMap((v) => {
      if (this.baseUrl && v.startsWith(this.baseUrl + '/')) v = v.slice(this.baseUrl.length + 1);
      if (v && !v.includes('/') && !v.includes(':') && sp.target?.length) return sp.target.map((t) => `${t}/${v}`);
      return [v];
    });
    return { ...f, value: values.join(',') };
  }

  async search(searchRequest) {
    const type = searchRequest.resourceType;
    if (!isResourceType(type)) {
      throw new OperationOutcomeError(badRequest(`Unsupported search type: ${type}`));
    }
    for (const f of searchRequest.filters ?? []) {
      const sp = globalSchema.types[type]?.searchParams?.[f.code];
      if (!sp) throw new OperationOutcomeError(badRequest(`Unknown search parameter: ${f.code}`, f.code));
      if (!SUPPORTED_OPERATORS[sp.type]?.includes(f.operator)) {
        const text = `Search on ${f.code} (${sp.type}) with modifier/prefix "${f.operator}" is not supported by the test server`;
        throw new OperationOutcomeError(badRequest(text, f.code));
      }
    }
    const filters = (searchRequest.filters ?? []).map((f) => this.normalizeFilter(type, f));
    const request = { ...searchRequest, filters };
    const pool = this.candidates(type, filters) ?? (this.resources.get(type)?.values() ?? []);
    let matched = [];
    for (const r of pool) if (matchesSearchRequest(r, request)) matched.push(r);
    if (searchRequest.sortRules?.length) matched = sortResources(matched, type, searchRequest.sortRules);

    const offset = Math.max(0, searchRequest.offset ?? 0);
    const count = Math.min(searchRequest.count ?? this.defaultPageSize, this.maxPageSize);
    const page = matched.slice(offset, offset + count);
    const entry = page.map((r) => ({ resource: project(r, searchRequest.fields), search: { mode: 'match' } }));
    await this.addIncludes(searchRequest, page, entry);
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total: matched.length,
      ...(entry.length ? { entry } : {}),
    };
  }

  /** One level of _include / _revinclude (":iterate" is treated as a single level). */
  async addIncludes(searchRequest, page, entry) {
    const seen = new Set(page.map((r) => getReferenceString(r)));
    const add = (r) => {
      const ref = getReferenceString(r);
      if (!seen.has(ref)) {
        seen.add(ref);
        entry.push({ resource: deepClone(r), search: { mode: 'include' } });
      }
    };
    for (const inc of searchRequest.include ?? []) {
      const sp = globalSchema.types[inc.resourceType]?.searchParams?.[inc.searchParam];
      if (sp?.type !== 'reference') continue;
      for (const r of page) {
        if (r.resourceType !== inc.resourceType) continue;
        const refs = convertToSearchableReferences(evalFhirPathTyped(sp.expression, [toTypedValue(r)]));
        for (const ref of refs) {
          const [t, id] = ref.split('/');
          if (inc.targetType && t !== inc.targetType) continue;
          const target = this.resources.get(t)?.get(id);
          if (target) add(target);
        }
      }
    }
    for (const rev of searchRequest.revInclude ?? []) {
      if (!page.length) break;
      const refs = page.map((r) => getReferenceString(r)).join(',');
      const bundle = await this.search({
        resourceType: rev.resourceType,
        filters: [{ code: rev.searchParam, operator: 'eq', value: refs }],
        count: this.maxPageSize,
      });
      for (const e of bundle.entry ?? []) add(e.resource);
    }
  }

  withTransaction(callback) {
    // Atomicity for transaction Bundles is handled by begin()/commit()/rollback(),
    // driven by the HTTP layer; requests are serialized, so there is no interleaving.
    return callback(undefined);
  }
}

// ------------------------------------------------------------------- helpers

/** Deterministic JSON (sorted keys) of a resource without meta.versionId/lastUpdated. */
function contentKey(r) {
  const { versionId, lastUpdated, ...meta } = r.meta ?? {};
  const stable = (v) =>
    Array.isArray(v)
      ? v.map(stable)
      : v && typeof v === 'object'
        ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, stable(v[k])]))
        : v;
  return JSON.stringify(stable({ ...r, meta: Object.keys(meta).length ? meta : undefined }));
}

function sameContent(a, b) {
  return contentKey(a) === contentKey(b);
}

/** Sort by the first value of each sort parameter's expression (string compare; missing last). */
function sortResources(resources, type, sortRules) {
  const keyed = resources.map((r) => ({
    r,
    keys: sortRules.map((rule) => {
      const sp = globalSchema.types[type]?.searchParams?.[rule.code];
      if (!sp?.expression) return undefined;
      const v = evalFhirPathTyped(sp.expression, [toTypedValue(r)])[0]?.value;
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'object') return String(v);
      return String(v.start ?? v.value ?? v.code ?? v.reference ?? v.coding?.[0]?.code ?? JSON.stringify(v));
    }),
  }));
  keyed.sort((a, b) => {
    for (let i = 0; i < sortRules.length; i++) {
      const x = a.keys[i];
      const y = b.keys[i];
      if (x === y) continue;
      if (x === undefined) return 1;
      if (y === undefined) return -1;
      return (x < y ? -1 : 1) * (sortRules[i].descending ? -1 : 1);
    }
    return 0;
  });
  return keyed.map((k) => k.r);
}

/** _elements: keep only the requested top-level elements (plus id/meta), tag SUBSETTED. */
function project(resource, fields) {
  const copy = deepClone(resource);
  if (!fields?.length) return copy;
  const out = { resourceType: copy.resourceType, id: copy.id, meta: { ...copy.meta } };
  for (const f of fields) if (f in copy) out[f] = copy[f];
  out.meta.tag = [...(out.meta.tag ?? []), { system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue', code: 'SUBSETTED' }];
  return out;
}

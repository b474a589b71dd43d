// Pyodide (CPython compiled to wasm by Emscripten) under node, measured from inside node.
//
//   node pyodide_bench.mjs <path to the pyodide package>  < spec.json  > result.json
//
// spec: {"cold": n, "warm": n, "cpu": {"code", "n"}, "chain": {"code", "n"}, "coverage": {name: code}}
// Times are performance.now() deltas in ms. The tool of the chain is a JS function
// (`noop`), Pyodide's own way for Python to call the host.
import { pathToFileURL } from "node:url";
import path from "node:path";
import { readFileSync } from "node:fs";

const pkg = process.argv[2];
const { loadPyodide, version } = await import(pathToFileURL(path.join(pkg, "pyodide.mjs")).href);
const spec = JSON.parse(readFileSync(0, "utf8"));

const timed = (fn) => { const t0 = performance.now(); const value = fn(); return [performance.now() - t0, value]; };
const plain = (v) => (v && typeof v.toJs === "function" ? v.toJs() : v);

const out = { version, cold_ms: [], warm_ms: [], cpu_ms: [], chain_ms: [], coverage: {} };

// The first interpreter serves every warm figure; fresh ones only time loadPyodide + `1 + 1`.
let t0 = performance.now();
const py = await loadPyodide({ indexURL: pkg });
py.runPython("1 + 1");
out.cold_ms.push(performance.now() - t0);

const fresh = () => py.globals.get("dict")();
for (let i = 0; i < spec.warm; i++) out.warm_ms.push(timed(() => py.runPython("1 + 1", { globals: fresh() }))[0]);
for (let i = 0; i < spec.cpu.n; i++) {
  const [ms, v] = timed(() => py.runPython(spec.cpu.code, { globals: fresh() }));
  out.cpu_ms.push(ms); out.cpu_value = plain(v);
}
py.globals.set("noop", (x) => x);
for (let i = 0; i < spec.chain.n; i++) {
  const g = fresh(); g.set("noop", (x) => x);
  const [ms, v] = timed(() => py.runPython(spec.chain.code, { globals: g }));
  out.chain_ms.push(ms); out.chain_value = plain(v);
}
for (const [name, code] of Object.entries(spec.coverage)) {
  try {
    out.coverage[name] = { ok: true, value: plain(py.runPython(code, { globals: fresh() })) };
  } catch (err) {
    out.coverage[name] = { ok: false, error: String(err.message || err).trim().split("\n").slice(-1)[0] };
  }
}
// Peak RSS with one live interpreter, after all of the above: VmHWM (reset at exec) where
// there is /proc, else maxRSS (which Linux would carry over from the parent process).
try {
  out.max_rss_kb = Number(/VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))[1]);
} catch {
  out.max_rss_kb = process.resourceUsage().maxRSS;
}

for (let i = 1; i < spec.cold; i++) {
  t0 = performance.now();
  const another = await loadPyodide({ indexURL: pkg });
  another.runPython("1 + 1");
  out.cold_ms.push(performance.now() - t0);
}
process.stdout.write(JSON.stringify(out));

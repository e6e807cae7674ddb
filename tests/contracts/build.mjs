// Compile every .sol file in this folder with solc-js from <repo>/tools/node_modules/solc
// and write build/<ContractName>.json = {contractName, abi, bytecode}.
// Usage (from anywhere, after `make tools`): node tests/contracts/build.mjs
import { createRequire } from "node:module";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "..", "..");
const solcPath = join(repoRoot, "tools", "node_modules", "solc");

let solc;
try {
  solc = createRequire(import.meta.url)(solcPath);
} catch (err) {
  console.error(`solc-js not found at ${solcPath}: run \`make tools\` (${err.message})`);
  process.exit(1);
}

const sources = {};
for (const file of readdirSync(here).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: readFileSync(join(here, file), "utf8") };
}
if (Object.keys(sources).length === 0) {
  console.error(`no .sol files in ${here}`);
  process.exit(1);
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    // Pinned so the committed bytecode does not change with the compiler's default.
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const problems = output.errors ?? [];
for (const p of problems) {
  console.error(p.formattedMessage ?? p.message);
}
if (problems.some((p) => p.severity === "error")) {
  process.exit(1);
}

const outDir = join(here, "build");
mkdirSync(outDir, { recursive: true });
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [contractName, c] of Object.entries(contracts)) {
    const artifact = { contractName, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
    writeFileSync(join(outDir, `${contractName}.json`), JSON.stringify(artifact, null, 2) + "\n");
    console.log(`${file}: ${contractName} -> ${join("build", contractName + ".json")}`);
  }
}
console.log(`solc ${solc.version()}`);

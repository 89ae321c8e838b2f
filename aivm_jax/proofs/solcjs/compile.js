// Compile Solidity sources with the pinned solc-js and print the artifacts as JSON:
//   {"compiler": "...", "<Contract>": {"abi", "bytecode", "deployedBytecode", "source"}, ...}
// usage: node compile.js [--via-ir] [--optimize-runs N] [--base DIR] FILE.sol [FILE.sol ...]
// Imports resolve relative to --base (default: the first file's folder); "@openzeppelin/..."
// resolves to the pinned OpenZeppelin Contracts in this folder's node_modules.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const args = process.argv.slice(2);
let viaIR = false;
let runs = 1;
let base = null;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--via-ir") viaIR = true;
  else if (args[i] === "--optimize-runs") runs = Number(args[++i]);
  else if (args[i] === "--base") base = args[++i];
  else files.push(args[i]);
}
base = base || path.dirname(files[0]);
const sources = {};
for (const file of files) {
  sources[path.relative(base, file)] = { content: fs.readFileSync(file, "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs },
    viaIR,
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const findImports = (p) => {
  const file = p.startsWith("@openzeppelin/") ? path.join(__dirname, "node_modules", p) : path.join(base, p);
  try {
    return { contents: fs.readFileSync(file, "utf8") };
  } catch (e) {
    return { error: "not found: " + p };
  }
};
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  process.stderr.write(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const result = { compiler: "solc-js " + solc.version() };
for (const [source, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    if (!c.evm.bytecode.object) continue; // interfaces
    result[name] = {
      source,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
  }
}
process.stdout.write(JSON.stringify(result));

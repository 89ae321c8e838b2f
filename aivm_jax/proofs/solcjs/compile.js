// Compile one Solidity file with the pinned solc-js; print {contract: {abi, bytecode, deployedBytecode}} as JSON.
// usage: node compile.js FILE.sol [--optimize-runs N]
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const file = process.argv[2];
const runsFlag = process.argv.indexOf("--optimize-runs");
const runs = runsFlag > 0 ? Number(process.argv[runsFlag + 1]) : 1;
const input = {
  language: "Solidity",
  sources: { [path.basename(file)]: { content: fs.readFileSync(file, "utf8") } },
  settings: {
    optimizer: { enabled: true, runs },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  process.stderr.write(errors.map((e) => e.formattedMessage).join("\n"));
  process.exit(1);
}
const result = { compiler: "solc-js " + solc.version() };
for (const contracts of Object.values(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    result[name] = {
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
  }
}
process.stdout.write(JSON.stringify(result));

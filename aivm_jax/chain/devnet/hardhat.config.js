// `aivm chain devnet`: a Hardhat node with its usual funded accounts. It mines a block for every
// transaction and, like a real chain, one every second when idle, so that block time (which the
// market's commit and reveal deadlines use) keeps up with the wall clock.
module.exports = {
  solidity: "0.8.24",
  networks: {
    hardhat: { chainId: 31337, hardfork: "cancun", mining: { auto: true, interval: 1000 } },
  },
};

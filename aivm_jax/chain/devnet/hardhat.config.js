// `aivm chain devnet`: a Hardhat node with its usual funded accounts, mining a block per transaction.
module.exports = {
  solidity: "0.8.24",
  networks: {
    hardhat: { chainId: 31337, hardfork: "cancun", mining: { auto: true } },
  },
};

// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ModelRegistry} from "./ModelRegistry.sol";

/// The interface of EZKL's per-circuit Solidity verifier (the verifying key is in its code).
interface IHalo2Verifier {
    function verifyProof(bytes calldata proof, uint256[] calldata instances) external returns (bool);
}

/// The interface of EZKL's reusable Solidity verifier.
interface IReusableVerifier {
    function verifyProof(bytes calldata proof, uint256[] calldata instances, bytes32[] memory vka)
        external
        returns (bool success, bytes32 vkaDigest, int256[] memory rescaledInstances);
}

/// @title InferenceMarket: requests, staked nodes, commit-reveal consensus, slashing, zk path.
/// @notice A user requests inference of a registered model on an input (inline or by URI, with
/// its hash) and pays a fee. Staked nodes commit keccak256(outputHash, salt) before the commit
/// deadline, then reveal before the reveal deadline. `finalize` accepts the output hash revealed
/// by a strict plurality of at least `quorum` nodes: those nodes share the fee and the slashed
/// bonds; nodes that revealed another hash or never revealed lose their bond. Alternatively a
/// proof accepted by the model's registered verifier finalizes a request at once. Payouts are
/// pulled with `withdraw` (checks-effects-interactions and a reentrancy guard).
contract InferenceMarket {
    enum Status {
        None,
        Open,
        Finalized,
        Failed
    }

    struct Request {
        bytes32 modelId;
        address requester;
        bytes32 inputHash;
        uint256 fee;
        uint64 commitDeadline;
        uint64 revealDeadline;
        uint8 quorum;
        Status status;
        bool byProof;
        uint32 commits;
        uint32 reveals;
        bytes32 outputHash;
    }

    uint256 public constant MAX_COMMITS = 16;
    uint256 private constant FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617;

    ModelRegistry public immutable registry;
    uint256 public immutable bond;

    uint256 public requestCount;
    mapping(uint256 => Request) private requests;
    mapping(uint256 => address[]) private committers;
    mapping(uint256 => mapping(address => bytes32)) public commitments;
    mapping(uint256 => mapping(address => bytes32)) public revealed;
    mapping(address => uint256) public stakeOf;
    mapping(address => uint256) public lockedOf;
    mapping(address => uint256) public withdrawable;
    bool private entered;

    event Staked(address indexed node, uint256 amount);
    event Unstaked(address indexed node, uint256 amount);
    event InferenceRequested(
        uint256 indexed requestId,
        bytes32 indexed modelId,
        address indexed requester,
        bytes32 inputHash,
        bytes inputData,
        string inputUri,
        uint256 fee,
        uint64 commitDeadline,
        uint64 revealDeadline,
        uint8 quorum
    );
    event Committed(uint256 indexed requestId, address indexed node);
    event Revealed(uint256 indexed requestId, address indexed node, bytes32 outputHash);
    event Finalized(uint256 indexed requestId, bytes32 outputHash, uint256 agreeing, bool byProof);
    event Failed(uint256 indexed requestId);
    event Paid(uint256 indexed requestId, address indexed node, uint256 amount);
    event Slashed(uint256 indexed requestId, address indexed node, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error UnknownModel(bytes32 modelId);
    error BadParameters();
    error NotOpen(uint256 requestId);
    error CommitClosed(uint256 requestId);
    error AlreadyCommitted(uint256 requestId, address node);
    error TooManyCommits(uint256 requestId);
    error InsufficientStake(address node, uint256 free, uint256 needed);
    error RevealNotOpen(uint256 requestId);
    error RevealClosed(uint256 requestId);
    error NotCommitted(uint256 requestId, address node);
    error AlreadyRevealed(uint256 requestId, address node);
    error RevealMismatch(uint256 requestId, address node);
    error TooEarly(uint256 requestId);
    error NoVerifier(bytes32 modelId);
    error WrongVka(bytes32 modelId);
    error InvalidProof(uint256 requestId);
    error InputMismatch(uint256 requestId);
    error Reentrancy();
    error TransferFailed(address account);

    modifier nonReentrant() {
        if (entered) revert Reentrancy();
        entered = true;
        _;
        entered = false;
    }

    constructor(ModelRegistry registry_, uint256 bond_) {
        registry = registry_;
        bond = bond_;
    }

    // ------------------------------------------------------------------ stake

    function stake() external payable {
        stakeOf[msg.sender] += msg.value;
        emit Staked(msg.sender, msg.value);
    }

    function unstake(uint256 amount) external {
        uint256 free = stakeOf[msg.sender] - lockedOf[msg.sender];
        if (amount > free) revert InsufficientStake(msg.sender, free, amount);
        stakeOf[msg.sender] -= amount;
        withdrawable[msg.sender] += amount;
        emit Unstaked(msg.sender, amount);
    }

    // ------------------------------------------------------------------ requests

    function requestInference(
        bytes32 modelId,
        bytes32 inputHash,
        bytes calldata inputData,
        string calldata inputUri,
        uint8 quorum,
        uint64 commitWindow,
        uint64 revealWindow
    ) external payable returns (uint256 requestId) {
        if (!registry.isRegistered(modelId)) revert UnknownModel(modelId);
        if (quorum == 0 || quorum > MAX_COMMITS || commitWindow == 0 || revealWindow == 0) revert BadParameters();
        requestId = ++requestCount;
        uint64 commitDeadline = uint64(block.timestamp) + commitWindow;
        requests[requestId] = Request({
            modelId: modelId,
            requester: msg.sender,
            inputHash: inputHash,
            fee: msg.value,
            commitDeadline: commitDeadline,
            revealDeadline: commitDeadline + revealWindow,
            quorum: quorum,
            status: Status.Open,
            byProof: false,
            commits: 0,
            reveals: 0,
            outputHash: bytes32(0)
        });
        emit InferenceRequested(
            requestId, modelId, msg.sender, inputHash, inputData, inputUri, msg.value, commitDeadline,
            commitDeadline + revealWindow, quorum
        );
    }

    function commit(uint256 requestId, bytes32 commitment) external {
        Request storage r = _open(requestId);
        if (block.timestamp >= r.commitDeadline) revert CommitClosed(requestId);
        if (commitments[requestId][msg.sender] != bytes32(0)) revert AlreadyCommitted(requestId, msg.sender);
        if (commitment == bytes32(0)) revert BadParameters();
        if (r.commits >= MAX_COMMITS) revert TooManyCommits(requestId);
        uint256 free = stakeOf[msg.sender] - lockedOf[msg.sender];
        if (free < bond) revert InsufficientStake(msg.sender, free, bond);
        lockedOf[msg.sender] += bond;
        commitments[requestId][msg.sender] = commitment;
        committers[requestId].push(msg.sender);
        r.commits += 1;
        emit Committed(requestId, msg.sender);
    }

    function reveal(uint256 requestId, bytes32 outputHash, bytes32 salt) external {
        Request storage r = _open(requestId);
        if (block.timestamp < r.commitDeadline) revert RevealNotOpen(requestId);
        if (block.timestamp >= r.revealDeadline) revert RevealClosed(requestId);
        bytes32 c = commitments[requestId][msg.sender];
        if (c == bytes32(0)) revert NotCommitted(requestId, msg.sender);
        if (revealed[requestId][msg.sender] != bytes32(0)) revert AlreadyRevealed(requestId, msg.sender);
        if (outputHash == bytes32(0) || keccak256(abi.encodePacked(outputHash, salt)) != c) {
            revert RevealMismatch(requestId, msg.sender);
        }
        revealed[requestId][msg.sender] = outputHash;
        r.reveals += 1;
        emit Revealed(requestId, msg.sender, outputHash);
    }

    /// Settle a request after its reveal deadline (or once every committed node revealed).
    function finalize(uint256 requestId) external {
        Request storage r = _open(requestId);
        bool everyoneRevealed = r.commits > 0 && r.reveals == r.commits && block.timestamp >= r.commitDeadline;
        if (block.timestamp < r.revealDeadline && !everyoneRevealed) revert TooEarly(requestId);
        address[] storage nodes = committers[requestId];
        (bytes32 best, uint256 agreeing, bool tie) = _tally(requestId, nodes);
        if (agreeing >= r.quorum && !tie) {
            r.status = Status.Finalized;
            r.outputHash = best;
            uint256 pool = r.fee;
            for (uint256 i = 0; i < nodes.length; i++) {
                address node = nodes[i];
                lockedOf[node] -= bond;
                if (revealed[requestId][node] != best) {
                    stakeOf[node] -= bond;
                    pool += bond;
                    emit Slashed(requestId, node, bond);
                }
            }
            uint256 share = pool / agreeing;
            for (uint256 i = 0; i < nodes.length; i++) {
                if (revealed[requestId][nodes[i]] == best) {
                    withdrawable[nodes[i]] += share;
                    emit Paid(requestId, nodes[i], share);
                }
            }
            withdrawable[r.requester] += pool - share * agreeing;
            emit Finalized(requestId, best, agreeing, false);
        } else {
            r.status = Status.Failed;
            uint256 refund = r.fee;
            for (uint256 i = 0; i < nodes.length; i++) {
                address node = nodes[i];
                lockedOf[node] -= bond;
                if (revealed[requestId][node] == bytes32(0)) {
                    stakeOf[node] -= bond;
                    refund += bond;
                    emit Slashed(requestId, node, bond);
                }
            }
            withdrawable[r.requester] += refund;
            emit Failed(requestId);
        }
    }

    /// The zk path: a proof accepted by the model's verifier finalizes the request at once.
    /// `instances` are the proof's public inputs: the input row, then the output row (int8).
    /// A model whose registered VKA digest is zero has its own verifier (`vka` must be empty);
    /// otherwise the verifier is EZKL's reusable one and `vka` the model's registered VKA.
    function submitProof(uint256 requestId, bytes calldata proof, uint256[] calldata instances, bytes32[] calldata vka)
        external
    {
        Request storage r = _open(requestId);
        ModelRegistry.Model memory m = registry.getModel(r.modelId);
        if (m.verifier == address(0)) revert NoVerifier(r.modelId);
        bool ownVerifier = m.vkaDigest == bytes32(0);
        if (ownVerifier ? vka.length != 0 : keccak256(abi.encodePacked(vka)) != m.vkaDigest) {
            revert WrongVka(r.modelId);
        }
        if (instances.length != uint256(m.inputSize) + m.outputSize) revert InvalidProof(requestId);
        // A low-level call: the verifier returns its result from assembly, and only the first
        // word (success) is read; decoding the rest could revert this contract instead.
        (bool called, bytes memory ret) = m.verifier.call(
            ownVerifier
                ? abi.encodeCall(IHalo2Verifier.verifyProof, (proof, instances))
                : abi.encodeCall(IReusableVerifier.verifyProof, (proof, instances, vka))
        );
        bool ok = called && ret.length >= 32 && abi.decode(ret, (uint256)) == 1;
        if (!ok) revert InvalidProof(requestId);
        bytes memory inputRow = _int8Bytes(instances, 0, m.inputSize, requestId);
        if (sha256(abi.encodePacked("aivm-in-v1", r.modelId, inputRow)) != r.inputHash) revert InputMismatch(requestId);
        bytes memory outputRow = _int8Bytes(instances, m.inputSize, m.outputSize, requestId);
        bytes32 rowHash = sha256(abi.encodePacked("aivm-row-v1", r.modelId, m.outputHeader, outputRow));
        bytes32 outputHash = sha256(abi.encodePacked("aivm-out-v1", r.modelId, hex"0100000000000000", rowHash));
        r.status = Status.Finalized;
        r.byProof = true;
        r.outputHash = outputHash;
        address[] storage nodes = committers[requestId];
        for (uint256 i = 0; i < nodes.length; i++) {
            lockedOf[nodes[i]] -= bond;
        }
        withdrawable[msg.sender] += r.fee;
        emit Paid(requestId, msg.sender, r.fee);
        emit Finalized(requestId, outputHash, 0, true);
    }

    function withdraw() external nonReentrant {
        uint256 amount = withdrawable[msg.sender];
        withdrawable[msg.sender] = 0;
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender);
        emit Withdrawn(msg.sender, amount);
    }

    // ------------------------------------------------------------------ views

    function getRequest(uint256 requestId) external view returns (Request memory) {
        return requests[requestId];
    }

    function committersOf(uint256 requestId) external view returns (address[] memory) {
        return committers[requestId];
    }

    // ------------------------------------------------------------------ internals

    function _open(uint256 requestId) private view returns (Request storage r) {
        r = requests[requestId];
        if (r.status != Status.Open) revert NotOpen(requestId);
    }

    function _tally(uint256 requestId, address[] storage nodes)
        private
        view
        returns (bytes32 best, uint256 bestCount, bool tie)
    {
        for (uint256 i = 0; i < nodes.length; i++) {
            bytes32 h = revealed[requestId][nodes[i]];
            if (h == bytes32(0)) continue;
            uint256 count = 0;
            for (uint256 j = 0; j < nodes.length; j++) {
                if (revealed[requestId][nodes[j]] == h) count++;
            }
            if (count > bestCount) {
                (best, bestCount, tie) = (h, count, false);
            } else if (count == bestCount && h != best) {
                tie = true;
            }
        }
    }

    /// Field elements -> int8 bytes; a value outside [-128, 127] is not an int8 row.
    function _int8Bytes(uint256[] calldata felts, uint256 start, uint256 n, uint256 requestId)
        private
        pure
        returns (bytes memory out)
    {
        out = new bytes(n);
        for (uint256 i = 0; i < n; i++) {
            uint256 f = felts[start + i];
            int256 v = f > FIELD / 2 ? -int256(FIELD - f) : int256(f);
            if (v < -128 || v > 127) revert InputMismatch(requestId);
            out[i] = bytes1(uint8(int8(v)));
        }
    }
}

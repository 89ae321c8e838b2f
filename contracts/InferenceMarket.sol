// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
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
/// its hash) and pays a fee. Staked nodes commit
/// keccak256(abi.encode(chainid, market, requestId, node, outputHash, salt)) before the commit
/// deadline (so a commitment cannot be copied by another node or replayed on another request),
/// then reveal before the reveal deadline. Windows lie within bounds fixed at deployment.
///
/// Settlement (who is paid and slashed when) is stated in docs/protocol.md:
/// * `finalize`, quorum mode: the output hash revealed by a strict plurality of at least `quorum`
///   nodes wins; its revealers share the fee and the bonds of the others (wrong or missing
///   reveals). Without such a plurality the request fails: the fee goes back to the requester;
///   nodes that never revealed and nodes whose hash had fewer reveals than the leading one lose
///   their bonds, which are burned (never paid to the requester, who chose the windows). A tie on
///   a model with a verifier first waits `proofWindow` for a proof, which settles it.
/// * `submitProof`, zk path: a proof accepted by the verifier registered when the request was
///   made finalizes it. The prover (who committed to the proof a block earlier, so a copied
///   transaction cannot take its fee) is paid the fee; nodes that revealed another hash, or
///   none by the reveal deadline, lose their bonds to the nodes that revealed the proven hash
///   (to the prover if none did).
///
/// Money code: checks-effects-interactions everywhere; the only external calls are the trusted
/// registry (views), the verifier (a STATICCALL made after every state change, so it can
/// neither re-enter nor change state) and `withdraw`'s transfer; every state-changing function
/// is `nonReentrant` (OpenZeppelin). The invariant that a stateful fuzz checks after every
/// action: balance == sum(stakeOf) + sum(withdrawable) + openFees + burned.
///
/// Slither (scripts/slither.py, run by the tests) reports, besides what is fixed: `timestamp`
/// (Low): deadlines are block times by design; a producer's few seconds of leeway are small
/// against the window bounds (10 s and up by default). `low-level-calls` (Info): the verifier is
/// STATICCALLed so that only its first return word is read. `pragma` (Info): OpenZeppelin's
/// files say ^0.8.20, ours ^0.8.24; both compile with the pinned 0.8.37.
contract InferenceMarket is ReentrancyGuard {
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
        address verifier; // the model's verifier when the request was made (zero: none)
        bytes32 vkaDigest;
        bytes32 verifierCodehash;
    }

    /// Protocol bounds on a request's windows, in seconds, fixed at deployment.
    struct Windows {
        uint64 minCommit;
        uint64 maxCommit;
        uint64 minReveal;
        uint64 maxReveal;
        uint64 proof; // how long a tied request waits for a proof after its reveal deadline
    }

    struct ProofCommitment {
        bytes32 digest; // keccak256(abi.encode(requestId, prover, keccak256(proof)))
        uint64 blockNumber;
    }

    uint256 public constant MAX_COMMITS = 16;
    uint256 private constant FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617;

    ModelRegistry public immutable registry;
    uint256 public immutable bond;
    uint64 public immutable minCommitWindow;
    uint64 public immutable maxCommitWindow;
    uint64 public immutable minRevealWindow;
    uint64 public immutable maxRevealWindow;
    uint64 public immutable proofWindow;

    uint256 public requestCount;
    uint256 public openFees; // fees of requests still open
    uint256 public burned; // slashed bonds that no one is owed
    mapping(uint256 => Request) private requests;
    mapping(uint256 => address[]) private committers;
    mapping(uint256 => mapping(address => bytes32)) public commitments;
    mapping(uint256 => mapping(address => bytes32)) public revealed;
    mapping(uint256 => mapping(address => ProofCommitment)) public proofCommitments;
    mapping(address => uint256) public stakeOf;
    mapping(address => uint256) public lockedOf;
    mapping(address => uint256) public withdrawable;

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
    event ProofCommitted(uint256 indexed requestId, address indexed prover);
    event Finalized(uint256 indexed requestId, bytes32 outputHash, uint256 agreeing, bool byProof);
    event Failed(uint256 indexed requestId);
    event Paid(uint256 indexed requestId, address indexed node, uint256 amount);
    event Slashed(uint256 indexed requestId, address indexed node, uint256 amount);
    event Burned(uint256 indexed requestId, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error UnknownModel(bytes32 modelId);
    error BadParameters();
    error BadWindows(uint64 commitWindow, uint64 revealWindow);
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
    error AwaitingProof(uint256 requestId, uint64 until);
    error NoVerifier(bytes32 modelId);
    error VerifierChanged(uint256 requestId);
    error WrongVka(bytes32 modelId);
    error ProofNotCommitted(uint256 requestId, address prover);
    error InvalidProof(uint256 requestId);
    error InputMismatch(uint256 requestId);

    constructor(ModelRegistry registry_, uint256 bond_, Windows memory windows) {
        if (
            bond_ == 0 || windows.minCommit == 0 || windows.minCommit > windows.maxCommit || windows.minReveal == 0
                || windows.minReveal > windows.maxReveal
        ) revert BadParameters();
        registry = registry_;
        bond = bond_;
        minCommitWindow = windows.minCommit;
        maxCommitWindow = windows.maxCommit;
        minRevealWindow = windows.minReveal;
        maxRevealWindow = windows.maxReveal;
        proofWindow = windows.proof;
    }

    // ------------------------------------------------------------------ stake

    function stake() external payable nonReentrant {
        stakeOf[msg.sender] += msg.value;
        emit Staked(msg.sender, msg.value);
    }

    function unstake(uint256 amount) external nonReentrant {
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
    ) external payable nonReentrant returns (uint256 requestId) {
        if (!registry.isRegistered(modelId)) revert UnknownModel(modelId);
        if (quorum == 0 || quorum > MAX_COMMITS) revert BadParameters();
        if (
            commitWindow < minCommitWindow || commitWindow > maxCommitWindow || revealWindow < minRevealWindow
                || revealWindow > maxRevealWindow
        ) revert BadWindows(commitWindow, revealWindow);
        ModelRegistry.Verifier memory v = registry.verifierOf(modelId);
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
            outputHash: bytes32(0),
            verifier: v.verifier,
            vkaDigest: v.vkaDigest,
            verifierCodehash: v.codehash
        });
        openFees += msg.value;
        emit InferenceRequested(
            requestId, modelId, msg.sender, inputHash, inputData, inputUri, msg.value, commitDeadline,
            commitDeadline + revealWindow, quorum
        );
    }

    /// `commitment` is `commitmentOf(requestId, msg.sender, outputHash, salt)`.
    function commit(uint256 requestId, bytes32 commitment) external nonReentrant {
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

    function reveal(uint256 requestId, bytes32 outputHash, bytes32 salt) external nonReentrant {
        Request storage r = _open(requestId);
        if (block.timestamp < r.commitDeadline) revert RevealNotOpen(requestId);
        if (block.timestamp >= r.revealDeadline) revert RevealClosed(requestId);
        bytes32 c = commitments[requestId][msg.sender];
        if (c == bytes32(0)) revert NotCommitted(requestId, msg.sender);
        if (revealed[requestId][msg.sender] != bytes32(0)) revert AlreadyRevealed(requestId, msg.sender);
        if (outputHash == bytes32(0) || commitmentOf(requestId, msg.sender, outputHash, salt) != c) {
            revert RevealMismatch(requestId, msg.sender);
        }
        revealed[requestId][msg.sender] = outputHash;
        r.reveals += 1;
        emit Revealed(requestId, msg.sender, outputHash);
    }

    /// Settle a request after its reveal deadline (or once every committed node revealed).
    function finalize(uint256 requestId) external nonReentrant {
        Request storage r = _open(requestId);
        bool everyoneRevealed = r.commits > 0 && r.reveals == r.commits && block.timestamp >= r.commitDeadline;
        if (block.timestamp < r.revealDeadline && !everyoneRevealed) revert TooEarly(requestId);
        address[] storage nodes = committers[requestId];
        (bytes32 best, uint256 agreeing, bool tie) = _tally(requestId, nodes);
        if (agreeing >= r.quorum && !tie) {
            _finalizeByQuorum(requestId, r, nodes, best, agreeing);
        } else {
            uint64 proofDeadline = r.revealDeadline + proofWindow;
            if (r.verifier != address(0) && r.reveals > 0 && block.timestamp < proofDeadline) {
                revert AwaitingProof(requestId, proofDeadline);
            }
            _fail(requestId, r, nodes, agreeing);
        }
    }

    /// The zk path, step 1: commit to a proof, at least one block before submitting it.
    function commitProof(uint256 requestId, bytes32 digest) external nonReentrant {
        _open(requestId);
        if (digest == bytes32(0)) revert BadParameters();
        proofCommitments[requestId][msg.sender] = ProofCommitment(digest, uint64(block.number));
        emit ProofCommitted(requestId, msg.sender);
    }

    /// The zk path, step 2: a proof accepted by the request's verifier finalizes the request.
    /// `instances` are the proof's public inputs: the input row, then the output row (int8);
    /// the zk path serves one-row requests of models with one int8 output.
    /// A model whose VKA digest is zero has its own verifier (`vka` must be empty); otherwise the
    /// verifier is EZKL's reusable one and `vka` the model's registered VKA.
    function submitProof(uint256 requestId, bytes calldata proof, uint256[] calldata instances, bytes32[] calldata vka)
        external
        nonReentrant
    {
        // ---- checks
        Request storage r = _open(requestId);
        ProofCommitment memory pc = proofCommitments[requestId][msg.sender];
        if (
            pc.blockNumber == 0 || pc.blockNumber >= block.number
                || pc.digest != proofDigest(requestId, msg.sender, proof)
        ) revert ProofNotCommitted(requestId, msg.sender);
        address verifier = r.verifier;
        if (verifier == address(0)) revert NoVerifier(r.modelId);
        if (verifier.codehash != r.verifierCodehash) revert VerifierChanged(requestId);
        bool ownVerifier = r.vkaDigest == bytes32(0);
        if (ownVerifier ? vka.length != 0 : keccak256(abi.encodePacked(vka)) != r.vkaDigest) {
            revert WrongVka(r.modelId);
        }
        bytes32 outputHash = _provenOutputHash(requestId, r, instances);

        // ---- effects: the request leaves Open and every payout is booked before the verifier runs
        r.status = Status.Finalized;
        r.byProof = true;
        r.outputHash = outputHash;
        _payByProof(requestId, r, outputHash);
        emit Finalized(requestId, outputHash, 0, true);

        // ---- interaction: a STATICCALL, so the verifier can neither re-enter nor change state.
        // Only the first word (success) is read; decoding the rest could revert this contract instead.
        (bool called, bytes memory ret) = verifier.staticcall(
            ownVerifier
                ? abi.encodeCall(IHalo2Verifier.verifyProof, (proof, instances))
                : abi.encodeCall(IReusableVerifier.verifyProof, (proof, instances, vka))
        );
        if (!(called && ret.length >= 32 && abi.decode(ret, (uint256)) == 1)) revert InvalidProof(requestId);
    }

    function withdraw() external nonReentrant {
        uint256 amount = withdrawable[msg.sender];
        withdrawable[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        Address.sendValue(payable(msg.sender), amount);
    }

    // ------------------------------------------------------------------ views

    function getRequest(uint256 requestId) external view returns (Request memory) {
        return requests[requestId];
    }

    function committersOf(uint256 requestId) external view returns (address[] memory) {
        return committers[requestId];
    }

    /// What `node` commits to for `requestId`: bound to this chain, this market, the request and the node.
    function commitmentOf(uint256 requestId, address node, bytes32 outputHash, bytes32 salt)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(block.chainid, address(this), requestId, node, outputHash, salt));
    }

    /// What a prover commits to with `commitProof`.
    function proofDigest(uint256 requestId, address prover, bytes calldata proof) public pure returns (bytes32) {
        return keccak256(abi.encode(requestId, prover, keccak256(proof)));
    }

    // ------------------------------------------------------------------ internals

    function _open(uint256 requestId) private view returns (Request storage r) {
        r = requests[requestId];
        if (r.status != Status.Open) revert NotOpen(requestId);
    }

    function _finalizeByQuorum(
        uint256 requestId,
        Request storage r,
        address[] storage nodes,
        bytes32 best,
        uint256 agreeing
    ) private {
        r.status = Status.Finalized;
        r.outputHash = best;
        openFees -= r.fee;
        uint256 pool = r.fee;
        for (uint256 i = 0; i < nodes.length; i++) {
            address node = nodes[i];
            lockedOf[node] -= bond;
            if (revealed[requestId][node] != best) pool += _slash(requestId, node);
        }
        uint256 share = pool / agreeing;
        for (uint256 i = 0; i < nodes.length; i++) {
            if (revealed[requestId][nodes[i]] == best) _pay(requestId, nodes[i], share);
        }
        _burn(requestId, pool % agreeing); // the division's remainder
        emit Finalized(requestId, best, agreeing, false);
    }

    /// No strict plurality of `quorum`: refund the fee; burn the bonds of the nodes that never
    /// revealed and of those whose hash had fewer reveals than the leading one (`leading`).
    function _fail(uint256 requestId, Request storage r, address[] storage nodes, uint256 leading) private {
        r.status = Status.Failed;
        openFees -= r.fee;
        uint256 slashed = 0;
        for (uint256 i = 0; i < nodes.length; i++) {
            address node = nodes[i];
            lockedOf[node] -= bond;
            bytes32 h = revealed[requestId][node];
            if (h == bytes32(0) || _count(requestId, nodes, h) < leading) slashed += _slash(requestId, node);
        }
        _burn(requestId, slashed);
        withdrawable[r.requester] += r.fee;
        emit Failed(requestId);
    }

    /// The prover is paid the fee; wrong or (after the deadline) missing reveals are slashed in
    /// favour of the nodes that revealed the proven hash, or of the prover if none did.
    function _payByProof(uint256 requestId, Request storage r, bytes32 outputHash) private {
        openFees -= r.fee;
        _pay(requestId, msg.sender, r.fee);
        address[] storage nodes = committers[requestId];
        uint256 pool = 0;
        uint256 matching = 0;
        bool revealClosed = block.timestamp >= r.revealDeadline;
        for (uint256 i = 0; i < nodes.length; i++) {
            address node = nodes[i];
            lockedOf[node] -= bond;
            bytes32 h = revealed[requestId][node];
            if (h == outputHash) matching++;
            else if (h != bytes32(0) || revealClosed) pool += _slash(requestId, node);
        }
        if (pool == 0) return;
        if (matching == 0) {
            _pay(requestId, msg.sender, pool);
            return;
        }
        uint256 share = pool / matching;
        for (uint256 i = 0; i < nodes.length; i++) {
            if (revealed[requestId][nodes[i]] == outputHash) _pay(requestId, nodes[i], share);
        }
        _burn(requestId, pool % matching); // the division's remainder
    }

    function _slash(uint256 requestId, address node) private returns (uint256) {
        stakeOf[node] -= bond;
        emit Slashed(requestId, node, bond);
        return bond;
    }

    function _pay(uint256 requestId, address account, uint256 amount) private {
        withdrawable[account] += amount;
        emit Paid(requestId, account, amount);
    }

    function _burn(uint256 requestId, uint256 amount) private {
        if (amount == 0) return;
        burned += amount;
        emit Burned(requestId, amount);
    }

    /// The AIVM output hash of the proof's output row, after checking its input row against the request.
    function _provenOutputHash(uint256 requestId, Request storage r, uint256[] calldata instances)
        private
        view
        returns (bytes32)
    {
        ModelRegistry.Shape memory shape = registry.shapeOf(r.modelId);
        if (instances.length != uint256(shape.inputSize) + shape.outputSize) revert InvalidProof(requestId);
        bytes memory inputRow = _int8Bytes(instances, 0, shape.inputSize, requestId);
        if (sha256(abi.encodePacked("aivm-in-v1", r.modelId, inputRow)) != r.inputHash) revert InputMismatch(requestId);
        bytes memory outputRow = _int8Bytes(instances, shape.inputSize, shape.outputSize, requestId);
        // The AIVM row hash (aivm_jax.runtime._hashing). Two dynamic parts, but no ambiguity: the
        // header is fixed per model once registered, and the row's length by its registered shape.
        // slither-disable-next-line encode-packed-collision
        bytes32 rowHash = sha256(abi.encodePacked("aivm-row-v1", r.modelId, shape.outputHeader, outputRow));
        return sha256(abi.encodePacked("aivm-out-v1", r.modelId, hex"0100000000000000", rowHash));
    }

    function _count(uint256 requestId, address[] storage nodes, bytes32 h) private view returns (uint256 count) {
        for (uint256 j = 0; j < nodes.length; j++) {
            if (revealed[requestId][nodes[j]] == h) count++;
        }
    }

    function _tally(uint256 requestId, address[] storage nodes)
        private
        view
        returns (bytes32 best, uint256 bestCount, bool tie)
    {
        for (uint256 i = 0; i < nodes.length; i++) {
            bytes32 h = revealed[requestId][nodes[i]];
            if (h == bytes32(0)) continue;
            uint256 count = _count(requestId, nodes, h);
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

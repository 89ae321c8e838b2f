// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ModelRegistry: the AIVM's on-chain model repository.
/// @notice A model id is the SHA-256 of an AIVM program file (`aivm info` prints it). Once
/// registered, an id's owner, URI, size, shape and metadata can never change; new versions are
/// new ids that link to their parent, and only the parent's owner may add them. The owner may
/// set the proof verifier (the model's own EZKL verifier, or EZKL's reusable one and the
/// model's VKA digest); the registry records the verifier's code hash with it, so that users
/// and nodes can compare it with the verifier the program generates (`aivm prove verifier` is
/// deterministic). The market snapshots the verifier when a request is made, so changing it
/// never affects open requests.
///
/// Each model also records its model commitment (`aivm_jax.disputes.model_commitment`): the
/// Merkle root over every step descriptor and every weight slice of the program, against which
/// a dispute game opens the step and the weights its one-step check reads.
///
/// What the registry cannot check: the program is not on chain, so the shape, row-hash header
/// and model commitment that the owner registers are checked off chain, by every node before it
/// serves the model and by `aivm` before it requests (`Network.check_registration`).
contract ModelRegistry {
    struct Model {
        address owner;
        bytes32 parent; // zero for a first version
        uint32 opset;
        uint64 registeredAt;
        uint64 size; // bytes of the program file (nodes refuse larger downloads)
        string uri; // where to fetch the program file
        string metadata; // JSON: name, fidelity, ...
        uint32 inputSize; // elements of one input row
        uint32 outputSize; // elements of one output row (the zk path needs int8 outputs)
        bytes outputHeader; // row-hash header of the program's output (see aivm_jax.runtime._hashing)
        address verifier; // zero until the owner sets one
        bytes32 vkaDigest; // keccak256 of the model's VKA in a reusable `verifier`; zero: its own verifier
        bytes32 verifierCodehash; // EXTCODEHASH of `verifier` when it was set
        bytes32 commitment; // the model commitment: the root dispute games open steps and weights against
    }

    /// What the zk path needs to recompute input and output hashes from a proof's instances.
    struct Shape {
        uint32 inputSize;
        uint32 outputSize;
        bytes outputHeader;
    }

    /// The verifier a request is checked by: copied into the request when it is made.
    struct Verifier {
        address verifier;
        bytes32 vkaDigest;
        bytes32 codehash;
    }

    mapping(bytes32 => Model) private models;
    mapping(bytes32 => bytes32[]) private children;

    event ModelRegistered(
        bytes32 indexed modelId,
        address indexed owner,
        bytes32 indexed parent,
        string uri,
        uint32 opset,
        string metadata,
        bytes32 commitment
    );
    event VerifierSet(bytes32 indexed modelId, address verifier, bytes32 vkaDigest, bytes32 codehash);

    error ZeroModelId();
    error AlreadyRegistered(bytes32 modelId);
    error UnknownModel(bytes32 modelId);
    error NotOwner(bytes32 modelId, address caller);
    error BadShape(bytes32 modelId);
    error ZeroCommitment(bytes32 modelId);
    error NotAContract(address verifier);

    function register(
        bytes32 modelId,
        string calldata uri,
        uint64 size,
        uint32 opset,
        string calldata metadata,
        Shape calldata shape,
        bytes32 commitment
    ) external {
        _register(modelId, bytes32(0), uri, size, opset, metadata, shape, commitment);
    }

    function registerVersion(
        bytes32 parent,
        bytes32 modelId,
        string calldata uri,
        uint64 size,
        uint32 opset,
        string calldata metadata,
        Shape calldata shape,
        bytes32 commitment
    ) external {
        Model storage p = models[parent];
        if (p.owner == address(0)) revert UnknownModel(parent);
        if (p.owner != msg.sender) revert NotOwner(parent, msg.sender);
        _register(modelId, parent, uri, size, opset, metadata, shape, commitment);
        children[parent].push(modelId);
    }

    /// Set (or clear, with address zero) the model's verifier. A verifier must be a contract;
    /// its code hash is recorded. Requests already made keep the verifier they were made with.
    function setVerifier(bytes32 modelId, address verifier, bytes32 vkaDigest) external {
        Model storage m = models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        if (m.owner != msg.sender) revert NotOwner(modelId, msg.sender);
        if (verifier != address(0) && verifier.code.length == 0) revert NotAContract(verifier);
        bytes32 codehash = verifier == address(0) ? bytes32(0) : verifier.codehash;
        m.verifier = verifier;
        m.vkaDigest = verifier == address(0) ? bytes32(0) : vkaDigest;
        m.verifierCodehash = codehash;
        emit VerifierSet(modelId, verifier, m.vkaDigest, codehash);
    }

    function _register(
        bytes32 modelId,
        bytes32 parent,
        string calldata uri,
        uint64 size,
        uint32 opset,
        string calldata metadata,
        Shape calldata shape,
        bytes32 commitment
    ) private {
        if (modelId == bytes32(0)) revert ZeroModelId();
        if (models[modelId].owner != address(0)) revert AlreadyRegistered(modelId);
        if (size == 0 || shape.inputSize == 0 || shape.outputSize == 0) revert BadShape(modelId);
        if (commitment == bytes32(0)) revert ZeroCommitment(modelId);
        models[modelId] = Model({
            owner: msg.sender,
            parent: parent,
            opset: opset,
            registeredAt: uint64(block.timestamp),
            size: size,
            uri: uri,
            metadata: metadata,
            inputSize: shape.inputSize,
            outputSize: shape.outputSize,
            outputHeader: shape.outputHeader,
            verifier: address(0),
            vkaDigest: bytes32(0),
            verifierCodehash: bytes32(0),
            commitment: commitment
        });
        emit ModelRegistered(modelId, msg.sender, parent, uri, opset, metadata, commitment);
    }

    function isRegistered(bytes32 modelId) external view returns (bool) {
        return models[modelId].owner != address(0);
    }

    function getModel(bytes32 modelId) external view returns (Model memory) {
        if (models[modelId].owner == address(0)) revert UnknownModel(modelId);
        return models[modelId];
    }

    /// The model's current verifier (reverts for an unknown model).
    function verifierOf(bytes32 modelId) external view returns (Verifier memory) {
        Model storage m = models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        return Verifier(m.verifier, m.vkaDigest, m.verifierCodehash);
    }

    /// The model's row shape and output row-hash header (never change once registered).
    function shapeOf(bytes32 modelId) external view returns (Shape memory) {
        Model storage m = models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        return Shape(m.inputSize, m.outputSize, m.outputHeader);
    }

    /// The model commitment the owner registered (reverts for an unknown model).
    function commitmentOf(bytes32 modelId) external view returns (bytes32) {
        Model storage m = models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        return m.commitment;
    }

    function versionsOf(bytes32 modelId) external view returns (bytes32[] memory) {
        return children[modelId];
    }
}

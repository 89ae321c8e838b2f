// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Hashes} from "@openzeppelin/contracts/utils/cryptography/Hashes.sol";
import "./OneStep.sol";

/// The dispute game over a request's trace (issue 20; docs/spec/disputes.md).
///
/// Two parties committed different trace roots for one request: the **defender** (whose
/// result is challenged) and the **challenger**. The game descends their Merkle trees node
/// by node, down the batch's row tree, then the row's step tree (always towards the first
/// step whose leaves differ), then that step's slice tree, to one output element whose
/// values differ; then a one-step executor (OneStep.sol) recomputes that element from its
/// operands, proven against the agreed part of the trace and the model commitment, and the
/// game rules for the party whose value it reproduces.
///
/// Why it is sound with commutative (sorted-pair) trees, whose proofs do not bind a leaf's
/// position: the game never takes a party's word for a position. Each descent move reveals a
/// node's two children, which the game places itself at (level - 1, 2i) and (2i + 1) of the
/// canonical tree shape; a leaf is accepted only if it encodes the position the game expects.
/// When the descent goes right because the left children are equal, that left subtree is the
/// same for both parties, so it is the honest party's well-formed subtree; every step before
/// the disputed one lies in such an agreed subtree, and the one-step check opens operands
/// only there. An honest party can always make its move, so it can lose only by its clock.
///
/// Turns: at each level the defender reveals first, then the challenger. The final checks
/// (`checkShape`, `resolveInput`, `resolve`) may be sent by either party and run on the
/// challenger's clock. Each party has `clock` seconds in all (a chess clock); a party whose
/// time runs out loses (`timeout`). The game holds no money: its **referee** (the contract
/// that created it, e.g. the market) reads `outcome` and `spent` and settles the bonds.
contract DisputeGame {
    bytes32 internal constant TAG_MODEL = "aivm.model.v1";
    bytes32 internal constant TAG_STEP = "aivm.step.v1";
    bytes32 internal constant TAG_PARAM_ROW = "aivm.param.row.v1";
    bytes32 internal constant TAG_PARAM_COL = "aivm.param.col.v1";
    bytes32 internal constant TAG_SLICE = "aivm.trace.slice.v1";
    bytes32 internal constant TAG_TRACE_STEP = "aivm.trace.step.v1";
    bytes32 internal constant TAG_ROW = "aivm.trace.row.v1";
    bytes32 internal constant TAG_INPUT_ROW = "aivm.input.row.v1";
    uint256 internal constant SLICE_BYTES = 1024;
    uint256 internal constant MAX_RANK = 8;

    enum Phase {
        None,
        Rows, // descending the batch's row tree
        Steps, // descending one row's step tree
        Slices, // descending one step's slice tree
        Shape, // the parties' step leaves differ in dtype or row shape: `checkShape`
        Input, // the first differing step is a program input: `resolveInput`
        OneStep, // one element differs: `resolve`
        Over
    }

    enum Outcome {
        Pending,
        DefenderWins,
        ChallengerWins,
        BothWrong // the recomputed value (or shape, or input) matches neither party
    }

    struct Game {
        address referee;
        address defender;
        address challenger;
        bytes32 modelRoot;
        bytes32 inputRoot;
        uint64 batch;
        uint64 nInputs;
        uint64 nSteps;
        uint64 turnStart;
        uint64 clockDefender; // seconds left
        uint64 clockChallenger;
        Phase phase;
        Outcome outcome;
        bool challengerToMove;
        uint32 moves;
        uint32 level; // of the current node in the current tree (0: a leaf)
        uint256 index; // of the current node in its level
        uint256 leaves; // of the current tree
        bytes32 nodeD; // the parties' current nodes (always different)
        bytes32 nodeC;
        bytes32 pendingLeft; // the defender's revealed children (or leaf data hash)
        bytes32 pendingRight;
        uint256 row;
        uint256 step;
        bytes32 payloadD; // keccak of each party's step leaf payload
        bytes32 payloadC;
        uint256 dtype; // the step's output dtype and row shape, as both parties claim them
        uint256 element; // the disputed element (C-order flat index in the step's output row)
        int256 valueD;
        int256 valueC;
        uint256 spentD; // wei each party spent on its moves (gas * tx.gasprice, estimated)
        uint256 spentC;
    }

    /// A trace value operand's step leaf: `payload` = abi.encode(bytes32 stepRoot, uint256
    /// dtype, uint256[] rowShape), `proof` up to the agreed subtree that holds it.
    struct ValueOpening {
        bytes payload;
        bytes32[] proof;
    }

    /// One slice of an operand: a trace value's (under its step root) or a parameter's rows
    /// or columns (under the model commitment).
    struct SliceOpening {
        uint256 operand;
        bool column;
        uint256 j;
        bytes data;
        bytes32[] proof;
    }

    IOneStep[] public executors;
    uint256 public gameCount;
    mapping(uint256 => Game) internal _games;
    mapping(uint256 => uint256[]) internal _shapes; // the claimed output row shape per game
    mapping(uint256 => mapping(uint256 => bytes32)) internal _agreed; // game -> level -> left sibling

    event GameCreated(uint256 indexed id, address indexed defender, address indexed challenger, address referee);
    event Moved(uint256 indexed id, address indexed mover, Phase phase, uint256 level, uint256 index);
    event Resolved(uint256 indexed id, Outcome outcome, uint256 row, uint256 step, uint256 element);

    error UnknownGame(uint256 id);
    error GameOver(uint256 id);
    error NotAParty(address caller);
    error NotYourTurn(address caller);
    error WrongPhase(Phase expected, Phase actual);
    error ClockExpired(address party);
    error ClockRunning(uint256 left);
    error SameRoots();
    error BadArguments();
    error BadProof();
    error WrongSliceLength(uint256 expected, uint256 actual);
    error NoDifference();
    error NoExecutor(bytes32 op);
    error OperandMismatch(uint256 operand);

    constructor(IOneStep[] memory executors_) {
        executors = executors_;
    }

    // ------------------------------------------------------------------ creating a game

    /// Start a game between `defender` (trace root `rootD`) and `challenger` (`rootC`) over
    /// a request for the model committed by `modelRoot`, on the input committed by
    /// `inputRoot` (`aivm.input.row.v1` leaves, one per batch row), `batch` rows. `header`
    /// is the model commitment's header leaf payload with its `headerProof`. Each party gets
    /// `clock` seconds in all. The caller is the game's referee.
    function create(
        address defender,
        address challenger,
        bytes32 modelRoot,
        bytes calldata header,
        bytes32[] calldata headerProof,
        bytes32 inputRoot,
        uint256 batch,
        bytes32 rootD,
        bytes32 rootC,
        uint64 clock
    ) external returns (uint256 id) {
        if (rootD == rootC) revert SameRoots();
        if (defender == challenger || defender == address(0) || challenger == address(0)) revert BadArguments();
        if (batch == 0 || batch > type(uint64).max || clock == 0) revert BadArguments();
        if (!MerkleProof.verify(headerProof, modelRoot, _leaf(TAG_MODEL, 0, 0, keccak256(header)))) revert BadProof();
        (,, uint256 nInputs, uint256 nNodes,,, uint256 sliceBytes) =
            abi.decode(header, (bytes32, uint256, uint256, uint256, uint256, uint256, uint256));
        if (sliceBytes != SLICE_BYTES || nInputs == 0 || nInputs + nNodes > type(uint64).max) revert BadArguments();

        id = ++gameCount;
        Game storage g = _games[id];
        g.referee = msg.sender;
        g.defender = defender;
        g.challenger = challenger;
        g.modelRoot = modelRoot;
        g.inputRoot = inputRoot;
        g.batch = uint64(batch);
        g.nInputs = uint64(nInputs);
        g.nSteps = uint64(nInputs + nNodes);
        g.clockDefender = clock;
        g.clockChallenger = clock;
        g.turnStart = uint64(block.timestamp);
        _enterTree(g, Phase.Rows, batch, rootD, rootC);
        emit GameCreated(id, defender, challenger, msg.sender);
    }

    // ------------------------------------------------------------------ descent moves

    /// Reveal the two children of your current node (the defender first, then the
    /// challenger). After the challenger's reveal the game goes to the left child if the
    /// left children differ, else to the right one (recording the agreed left child).
    function bisect(uint256 id, bytes32 left, bytes32 right) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        if (g.phase != Phase.Rows && g.phase != Phase.Steps && g.phase != Phase.Slices) {
            revert WrongPhase(Phase.Steps, g.phase);
        }
        if (g.level == 0) revert WrongPhase(Phase.OneStep, g.phase); // at a leaf: reveal it
        bool byChallenger = _turn(g);
        bytes32 node = Hashes.commutativeKeccak256(left, right);
        if (!byChallenger) {
            if (node != g.nodeD) revert BadProof();
            g.pendingLeft = left;
            g.pendingRight = right;
        } else {
            if (node != g.nodeC) revert BadProof();
            if (left == g.pendingLeft) {
                if (g.phase == Phase.Steps) _agreed[id][g.level - 1] = left;
                g.index = 2 * g.index + 1;
                g.nodeD = g.pendingRight;
                g.nodeC = right;
            } else {
                g.index = 2 * g.index;
                g.nodeD = g.pendingLeft;
                g.nodeC = left;
            }
            g.level -= 1;
            _skipCarried(g);
        }
        _moved(g, id, byChallenger, gasStart);
    }

    /// At a leaf of the row tree: reveal your row's trace root.
    function revealRow(uint256 id, bytes32 rowRoot) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _atLeaf(g, Phase.Rows);
        bool byChallenger = _turn(g);
        bytes32 leaf = _leaf(TAG_ROW, g.index, g.batch, keccak256(abi.encodePacked(rowRoot)));
        if (leaf != (byChallenger ? g.nodeC : g.nodeD)) revert BadProof();
        if (!byChallenger) {
            g.pendingLeft = rowRoot;
        } else {
            g.row = g.index;
            _enterTree(g, Phase.Steps, g.nSteps, g.pendingLeft, rowRoot);
        }
        _moved(g, id, byChallenger, gasStart);
    }

    /// At a leaf of the step tree: reveal your step leaf's payload, abi.encode(bytes32
    /// stepRoot, uint256 dtype, uint256[] rowShape).
    function revealStep(uint256 id, bytes calldata payload) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _atLeaf(g, Phase.Steps);
        bool byChallenger = _turn(g);
        bytes32 payloadHash = keccak256(payload);
        if (_leaf(TAG_TRACE_STEP, g.index, 0, payloadHash) != (byChallenger ? g.nodeC : g.nodeD)) revert BadProof();
        (bytes32 stepRoot, uint256 dtype, uint256[] memory shape) = _decodeStepPayload(payload);
        if (!byChallenger) {
            g.payloadD = payloadHash;
            g.pendingLeft = stepRoot;
            g.dtype = dtype;
            _shapes[id] = shape;
        } else {
            g.payloadC = payloadHash;
            g.step = g.index;
            if (g.step < g.nInputs) {
                g.phase = Phase.Input;
            } else if (dtype != g.dtype || !Shapes.equal(shape, _shapes[id])) {
                g.pendingRight = keccak256(abi.encode(dtype, shape)); // the challenger's claim
                g.phase = Phase.Shape;
            } else {
                _enterTree(g, Phase.Slices, _sliceCount(shape, dtype), g.pendingLeft, stepRoot);
            }
        }
        _moved(g, id, byChallenger, gasStart);
    }

    /// At a leaf of the slice tree, the defender: reveal your slice's bytes.
    function revealSlice(uint256 id, bytes calldata data) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _atLeaf(g, Phase.Slices);
        if (_turn(g)) revert NotYourTurn(msg.sender);
        _checkSlice(g, id, g.nodeD, data);
        g.pendingLeft = keccak256(data);
        _moved(g, id, false, gasStart);
    }

    /// At a leaf of the slice tree, the challenger: reveal your slice's bytes, with the
    /// defender's again (checked against what it revealed). The game finds the first element
    /// where they differ.
    function revealSlices(uint256 id, bytes calldata data, bytes calldata defenderData) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _atLeaf(g, Phase.Slices);
        if (!_turn(g)) revert NotYourTurn(msg.sender);
        _checkSlice(g, id, g.nodeC, data);
        if (keccak256(defenderData) != g.pendingLeft) revert BadProof();
        uint256 itemsize = _itemsize(g.dtype);
        uint256 at = 0;
        while (at < data.length && keccak256(data[at:at + itemsize]) == keccak256(defenderData[at:at + itemsize])) {
            at += itemsize;
        }
        if (at == data.length) revert NoDifference();
        uint256[] memory shape = _shapes[id];
        uint256 rowBytes = Shapes.rowLength(shape) * itemsize;
        uint256 perSlice = _rowsPerSlice(rowBytes);
        g.element = (g.index * perSlice * rowBytes + at) / itemsize;
        g.valueD = _decode(defenderData, at, g.dtype);
        g.valueC = _decode(data, at, g.dtype);
        g.phase = Phase.OneStep;
        _moved(g, id, true, gasStart);
    }

    // ------------------------------------------------------------------ final checks

    /// The parties' step leaves differ in dtype or row shape: recompute them from the step's
    /// descriptor (under the model commitment) and its value operands' step leaves (under
    /// the agreed subtrees), and rule for the party that claimed them.
    function checkShape(
        uint256 id,
        bytes calldata descriptor,
        bytes32[] calldata descriptorProof,
        ValueOpening[] calldata values
    ) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _finalMove(g, Phase.Shape);
        (Step memory step, uint256[][] memory shapes,, IOneStep executor) =
            _openStep(g, id, descriptor, descriptorProof, values);
        uint256[] memory expected = executor.outputShape(step, shapes);
        bytes32 right = keccak256(abi.encode(step.outDtype, expected));
        bool defenderRight = keccak256(abi.encode(g.dtype, _shapes[id])) == right;
        _end(g, id, _judge(defenderRight, g.pendingRight == right), gasStart);
    }

    /// The first differing step is program input `step`: the request's input commitment
    /// decides. `rowInputRoot` is the row's input root under the game's `inputRoot`
    /// (`rowProof`); `payloadHash` the true input step leaf's payload hash under it
    /// (`stepProof`).
    function resolveInput(
        uint256 id,
        bytes32 rowInputRoot,
        bytes32[] calldata rowProof,
        bytes32 payloadHash,
        bytes32[] calldata stepProof
    ) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _finalMove(g, Phase.Input);
        bytes32 rowLeaf = _leaf(TAG_INPUT_ROW, g.row, g.batch, keccak256(abi.encodePacked(rowInputRoot)));
        if (!MerkleProof.verify(rowProof, g.inputRoot, rowLeaf)) revert BadProof();
        if (!MerkleProof.verify(stepProof, rowInputRoot, _leaf(TAG_TRACE_STEP, g.step, 0, payloadHash))) {
            revert BadProof();
        }
        _end(g, id, _judge(payloadHash == g.payloadD, payloadHash == g.payloadC), gasStart);
    }

    /// One element differs: recompute it. `descriptor` is the step's descriptor (proof under
    /// the model commitment); `values` the step leaves of its value operands, in operand
    /// order (proofs under the agreed subtrees); `slices` the slices holding the rows the
    /// executor reads, and `which[i]` the slice that holds read `i`.
    function resolve(
        uint256 id,
        bytes calldata descriptor,
        bytes32[] calldata descriptorProof,
        ValueOpening[] calldata values,
        SliceOpening[] calldata slices,
        uint256[] calldata which
    ) external {
        uint256 gasStart = gasleft();
        Game storage g = _game(id);
        _finalMove(g, Phase.OneStep);
        (Step memory step, uint256[][] memory shapes, bytes32[] memory roots, IOneStep executor) =
            _openStep(g, id, descriptor, descriptorProof, values);
        uint256[] memory expected = executor.outputShape(step, shapes);
        if (step.outDtype != g.dtype || !Shapes.equal(expected, _shapes[id])) {
            _end(g, id, Outcome.BothWrong, gasStart); // both claimed the same wrong shape
            return;
        }
        Read[] memory reads = executor.reads(step, shapes, g.element);
        if (which.length != reads.length) revert BadArguments();
        bool[] memory checked = new bool[](slices.length);
        uint256[] memory starts = new uint256[](reads.length);
        uint256[] memory lengths = new uint256[](reads.length);
        for (uint256 r = 0; r < reads.length; ++r) {
            uint256 s = which[r];
            if (s >= slices.length) revert BadArguments();
            if (!checked[s]) {
                _checkOperandSlice(g, step, roots, slices[s]);
                checked[s] = true;
            }
            (starts[r], lengths[r]) = _row(step, shapes, reads[r], slices[s]);
        }
        int256 value = _execute(executor, step, shapes, g.element, starts, lengths);
        _end(g, id, _judge(value == g.valueD, value == g.valueC), gasStart);
    }

    /// End the game of a party whose clock has run out: the other party wins.
    function timeout(uint256 id) external {
        Game storage g = _game(id);
        uint256 elapsed = block.timestamp - g.turnStart;
        uint256 left = g.challengerToMove ? g.clockChallenger : g.clockDefender;
        if (elapsed <= left) revert ClockRunning(left - elapsed);
        Outcome outcome = g.challengerToMove ? Outcome.DefenderWins : Outcome.ChallengerWins;
        g.outcome = outcome;
        g.phase = Phase.Over;
        emit Resolved(id, outcome, g.row, g.step, g.element);
    }

    // ------------------------------------------------------------------ views

    /// A game's state (see `Game`).
    function game(uint256 id) external view returns (Game memory) {
        if (id == 0 || id > gameCount) revert UnknownGame(id);
        return _games[id];
    }

    /// The output row shape both parties claimed for the disputed step.
    function claimedShape(uint256 id) external view returns (uint256[] memory) {
        return _shapes[id];
    }

    /// The agreed left sibling recorded at `level` of the step tree (zero if none).
    function agreed(uint256 id, uint256 level) external view returns (bytes32) {
        return _agreed[id][level];
    }

    function outcome(uint256 id) external view returns (Outcome) {
        return _games[id].outcome;
    }

    /// Wei `party` spent on its moves in game `id` (estimated as gas used, the 21000 base and
    /// 16 gas per calldata byte, times the transaction's gas price).
    function spent(uint256 id, address party) external view returns (uint256) {
        Game storage g = _games[id];
        if (party == g.defender) return g.spentD;
        if (party == g.challenger) return g.spentC;
        return 0;
    }

    /// The executor that handles `op`.
    function executorFor(bytes32 op) public view returns (IOneStep) {
        uint256 count = executors.length;
        for (uint256 i = 0; i < count; ++i) {
            if (executors[i].handles(op)) return executors[i];
        }
        revert NoExecutor(op);
    }

    // ------------------------------------------------------------------ internals

    function _leaf(bytes32 tag, uint256 i, uint256 j, bytes32 payloadHash) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(tag, i, j, payloadHash))));
    }

    function _game(uint256 id) internal view returns (Game storage g) {
        if (id == 0 || id > gameCount) revert UnknownGame(id);
        g = _games[id];
        if (g.phase == Phase.Over) revert GameOver(id);
    }

    /// Checks the caller is the party to move and its clock has not run out; charges the
    /// elapsed time. Returns whether the mover is the challenger.
    function _turn(Game storage g) internal returns (bool byChallenger) {
        if (msg.sender != g.defender && msg.sender != g.challenger) revert NotAParty(msg.sender);
        byChallenger = g.challengerToMove;
        if (msg.sender != (byChallenger ? g.challenger : g.defender)) revert NotYourTurn(msg.sender);
        _charge(g, byChallenger);
    }

    function _charge(Game storage g, bool challenger) internal {
        uint256 elapsed = block.timestamp - g.turnStart;
        uint64 left = challenger ? g.clockChallenger : g.clockDefender;
        if (elapsed > left) revert ClockExpired(challenger ? g.challenger : g.defender);
        if (challenger) g.clockChallenger = left - uint64(elapsed);
        else g.clockDefender = left - uint64(elapsed);
        g.turnStart = uint64(block.timestamp);
    }

    function _moved(Game storage g, uint256 id, bool byChallenger, uint256 gasStart) internal {
        g.challengerToMove = !byChallenger;
        if (g.phase == Phase.Shape || g.phase == Phase.Input || g.phase == Phase.OneStep) {
            g.challengerToMove = true; // the final checks run on the challenger's clock
        }
        g.moves += 1;
        _spend(g, gasStart);
        emit Moved(id, msg.sender, g.phase, g.level, g.index);
    }

    function _spend(Game storage g, uint256 gasStart) internal {
        uint256 cost = (gasStart - gasleft() + 21000 + 16 * msg.data.length) * tx.gasprice;
        if (msg.sender == g.defender) g.spentD += cost;
        else g.spentC += cost;
    }

    function _atLeaf(Game storage g, Phase phase) internal view {
        if (g.phase != phase) revert WrongPhase(phase, g.phase);
        if (g.level != 0) revert WrongPhase(Phase.None, g.phase); // bisect first
    }

    function _finalMove(Game storage g, Phase phase) internal {
        if (g.phase != phase) revert WrongPhase(phase, g.phase);
        if (msg.sender != g.defender && msg.sender != g.challenger) revert NotAParty(msg.sender);
        _charge(g, true);
    }

    function _end(Game storage g, uint256 id, Outcome outcome_, uint256 gasStart) internal {
        g.outcome = outcome_;
        g.phase = Phase.Over;
        g.moves += 1;
        _spend(g, gasStart);
        emit Resolved(id, outcome_, g.row, g.step, g.element);
    }

    function _judge(bool defenderRight, bool challengerRight) internal pure returns (Outcome) {
        if (defenderRight) return Outcome.DefenderWins;
        if (challengerRight) return Outcome.ChallengerWins;
        return Outcome.BothWrong;
    }

    /// Enter a tree of `leaves` leaves at its root.
    function _enterTree(Game storage g, Phase phase, uint256 leaves, bytes32 rootD, bytes32 rootC) internal {
        g.phase = phase;
        g.leaves = leaves;
        g.level = uint32(_ceilLog2(leaves));
        g.index = 0;
        g.nodeD = rootD;
        g.nodeC = rootC;
        _skipCarried(g);
    }

    /// Step down through nodes that have a single child (an odd last node carried up
    /// unchanged): the child's hash is the node's, so no move is needed.
    function _skipCarried(Game storage g) internal {
        while (g.level > 0) {
            uint256 below = _levelSize(g.leaves, g.level - 1);
            if (2 * g.index + 1 < below) return;
            g.level -= 1;
            g.index = 2 * g.index;
        }
    }

    function _levelSize(uint256 leaves, uint256 level) internal pure returns (uint256) {
        return (leaves + (1 << level) - 1) >> level;
    }

    function _ceilLog2(uint256 n) internal pure returns (uint256 k) {
        while ((1 << k) < n) ++k;
    }

    function _decodeStepPayload(bytes memory payload)
        internal
        pure
        returns (bytes32 stepRoot, uint256 dtype, uint256[] memory shape)
    {
        (stepRoot, dtype, shape) = abi.decode(payload, (bytes32, uint256, uint256[]));
        if ((dtype != 8 && dtype != 32) || shape.length > MAX_RANK) revert BadArguments();
        for (uint256 i = 0; i < shape.length; ++i) {
            if (shape[i] == 0 || shape[i] > type(uint32).max) revert BadArguments();
        }
    }

    /// Bytes per element of dtype code `dtype` (8: int8, 32: int32).
    function _itemsize(uint256 dtype) internal pure returns (uint256) {
        return dtype == 8 ? 1 : 4;
    }

    function _rowsPerSlice(uint256 rowBytes) internal pure returns (uint256) {
        uint256 r = SLICE_BYTES / rowBytes;
        return r == 0 ? 1 : r;
    }

    function _sliceCount(uint256[] memory shape, uint256 dtype) internal pure returns (uint256) {
        uint256 d = Shapes.rowLength(shape);
        uint256 rows = Shapes.size(shape) / d;
        uint256 r = _rowsPerSlice(d * _itemsize(dtype));
        return (rows + r - 1) / r;
    }

    function _checkSlice(Game storage g, uint256 id, bytes32 node, bytes calldata data) internal view {
        if (_leaf(TAG_SLICE, g.step, g.index, keccak256(data)) != node) revert BadProof();
        uint256[] memory shape = _shapes[id];
        uint256 rowBytes = Shapes.rowLength(shape) * _itemsize(g.dtype);
        uint256 r = _rowsPerSlice(rowBytes);
        uint256 rows = Shapes.size(shape) / Shapes.rowLength(shape) - g.index * r;
        uint256 expected = (rows < r ? rows : r) * rowBytes;
        if (data.length != expected) revert WrongSliceLength(expected, data.length);
    }

    /// An int8 or int32 (little-endian) value at byte `at` of `data`.
    function _decode(bytes memory data, uint256 at, uint256 dtype) internal pure returns (int256) {
        if (dtype == 8) return int256(int8(uint8(data[at])));
        uint32 u = uint32(uint8(data[at])) | (uint32(uint8(data[at + 1])) << 8) | (uint32(uint8(data[at + 2])) << 16)
            | (uint32(uint8(data[at + 3])) << 24);
        return int256(int32(u));
    }

    /// Opens the disputed step's descriptor and its value operands' step leaves; returns the
    /// decoded step, every operand's actual shape, each value operand's step root, and the
    /// executor of its op.
    function _openStep(
        Game storage g,
        uint256 id,
        bytes calldata descriptor,
        bytes32[] calldata descriptorProof,
        ValueOpening[] calldata values
    ) internal view returns (Step memory step, uint256[][] memory shapes, bytes32[] memory roots, IOneStep executor) {
        if (!MerkleProof.verify(descriptorProof, g.modelRoot, _leaf(TAG_STEP, g.step, 0, keccak256(descriptor)))) {
            revert BadProof();
        }
        // A descriptor is abi.encode of its five fields in order (not of one Step tuple).
        (step.op, step.operands, step.outDtype, step.outShape, step.attrs) =
            abi.decode(descriptor, (bytes32, Operand[], uint256, uint256[], int256[]));
        executor = executorFor(step.op);
        shapes = new uint256[][](step.operands.length);
        roots = new bytes32[](step.operands.length);
        uint256 v = 0;
        for (uint256 k = 0; k < step.operands.length; ++k) {
            Operand memory operand = step.operands[k];
            if (operand.kind == 1) {
                shapes[k] = operand.shape;
                continue;
            }
            if (v >= values.length) revert BadArguments();
            ValueOpening calldata opening = values[v++];
            uint256 t = operand.index;
            if (t >= g.step) revert OperandMismatch(k);
            bytes32 subtree = _agreed[id][_divergence(t, g.step)];
            if (!MerkleProof.verify(opening.proof, subtree, _leaf(TAG_TRACE_STEP, t, 0, keccak256(opening.payload)))) {
                revert BadProof();
            }
            uint256 dtype;
            (roots[k], dtype, shapes[k]) = _decodeStepPayload(opening.payload);
            if (dtype != operand.dtype) revert OperandMismatch(k);
        }
        if (v != values.length) revert BadArguments();
    }

    /// The level at which leaf `t < s` and leaf `s` part: `t`'s ancestor there is the left
    /// sibling recorded when the descent went right.
    function _divergence(uint256 t, uint256 s) internal pure returns (uint256 level) {
        uint256 x = t ^ s;
        while (x > 1) {
            x >>= 1;
            ++level;
        }
    }

    function _checkOperandSlice(Game storage g, Step memory step, bytes32[] memory roots, SliceOpening calldata slice)
        internal
        view
    {
        if (slice.operand >= step.operands.length) revert BadArguments();
        Operand memory operand = step.operands[slice.operand];
        bytes32 leaf;
        bytes32 root;
        if (operand.kind == 1) {
            leaf = _leaf(slice.column ? TAG_PARAM_COL : TAG_PARAM_ROW, operand.index, slice.j, keccak256(slice.data));
            root = g.modelRoot;
        } else {
            if (slice.column) revert BadArguments();
            leaf = _leaf(TAG_SLICE, operand.index, slice.j, keccak256(slice.data));
            root = roots[slice.operand];
        }
        if (!MerkleProof.verify(slice.proof, root, leaf)) revert BadProof();
    }

    /// Where the packed canonical bytes of `read` lie in this call's calldata: `length` bytes
    /// from `start`, inside `slice` (which must be the slice that holds the row). Nothing is
    /// decoded: the executor decodes the elements it uses.
    function _row(Step memory step, uint256[][] memory shapes, Read memory read, SliceOpening calldata slice)
        internal
        pure
        returns (uint256 start, uint256 length)
    {
        if (read.operand != slice.operand || read.column != slice.column) revert OperandMismatch(read.operand);
        uint256[] memory shape = shapes[read.operand];
        uint256 dtype = step.operands[read.operand].dtype;
        uint256 itemsize = _itemsize(dtype);
        uint256 d = Shapes.rowLength(shape);
        if (read.column) d = Shapes.size(shape) / d; // a row of the transpose
        uint256 rowBytes = d * itemsize;
        uint256 r = _rowsPerSlice(rowBytes);
        if (slice.j != read.index / r) revert OperandMismatch(read.operand);
        uint256 offset = (read.index % r) * rowBytes;
        if (slice.data.length < offset + rowBytes) revert BadArguments();
        bytes calldata data = slice.data;
        assembly ("memory-safe") {
            start := add(data.offset, offset)
        }
        length = rowBytes;
    }

    /// `executor.execute(step, shapes, element, rows)` where row i is the `lengths[i]` calldata
    /// bytes from `starts[i]`. The rows are copied once, straight from this call's calldata into
    /// the arguments of the STATICCALL (an ABI-encoded `bytes[]` built in place), instead of
    /// into a memory `bytes[]` and then again by the ABI encoder: memory grows by the rows'
    /// bytes once (its cost is quadratic). A revert of the executor is passed on as it is.
    function _execute(
        IOneStep executor,
        Step memory step,
        uint256[][] memory shapes,
        uint256 element,
        uint256[] memory starts,
        uint256[] memory lengths
    ) internal view returns (int256) {
        // The arguments with an empty `rows`: `rows` is the last tail, its one word (the count 0)
        // ends the encoding. That word is replaced by the rows' encoding.
        bytes memory head = abi.encodeCall(IOneStep.execute, (step, shapes, element, new bytes[](0)));
        uint256 n = starts.length;
        uint256 size = head.length + 32 * n; // the head, the count, one offset per row
        for (uint256 i = 0; i < n; ++i) {
            size += 32 + ((lengths[i] + 31) & ~uint256(31)); // each row: its length, its bytes padded
        }
        bytes memory data = new bytes(size); // zeroed: the padding stays zero
        assembly ("memory-safe") {
            let src := add(head, 0x20)
            let dst := add(data, 0x20)
            let headBytes := sub(mload(head), 0x20)
            // Whole words: the last may run past headBytes, into the count written next.
            for { let k := 0 } lt(k, headBytes) { k := add(k, 0x20) } { mstore(add(dst, k), mload(add(src, k))) }
            let array := add(dst, headBytes)
            mstore(array, n)
            let base := add(array, 0x20) // offsets count from the first offset word
            let at := mul(n, 0x20)
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                let length := mload(add(lengths, mul(add(i, 1), 0x20)))
                mstore(add(base, mul(i, 0x20)), at)
                mstore(add(base, at), length)
                calldatacopy(add(add(base, at), 0x20), mload(add(starts, mul(add(i, 1), 0x20))), length)
                at := add(at, add(0x20, and(add(length, 31), not(31))))
            }
        }
        (bool ok, bytes memory result) = address(executor).staticcall(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 0x20), mload(result))
            }
        }
        if (result.length != 32) revert NoExecutor(step.op);
        return abi.decode(result, (int256));
    }
}

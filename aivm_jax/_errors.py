"""The AIVM's exceptions: one root, and subclasses that also inherit the built-in they are.

Catch `AivmError` to handle everything the library raises on purpose; catch the
built-in (`ValueError`, `TypeError`, `FileNotFoundError`, `KeyError`) when that
is the question you are asking. Every message says what was expected, what was
received, and what to do next.
"""

from __future__ import annotations

__all__ = [
    "AivmError",
    "BatchJobError",
    "ChainConnectionError",
    "ChainError",
    "InputDTypeError",
    "InputFileError",
    "InputRangeError",
    "InputShapeError",
    "InvalidProofError",
    "KeysNotFoundError",
    "ModelFileError",
    "ModelFileNotFoundError",
    "ModelIdMismatchError",
    "ModelSourceError",
    "NotDeployedError",
    "OpError",
    "ProgramError",
    "ProofError",
    "ResourceLimitError",
    "ResultTimeoutError",
    "SrsError",
    "TamperedModelError",
    "ToolchainError",
    "TransactionRevertedError",
    "UntrustedVerifierError",
    "RegistrationMismatchError",
    "UnknownModelError",
    "UnsupportedForProofError",
    "WrongProgramError",
]


class AivmError(Exception):
    """Root of every error the AIVM raises on purpose."""


class ProgramError(AivmError, ValueError):
    """An AIVM program is malformed: unknown op, bad attribute, dangling tensor name."""


class OpError(ProgramError, TypeError):
    """An op was given operands of the wrong dtype or shape, or a bad attribute."""


class ModelFileError(AivmError, ValueError):
    """A `.aivm` file cannot be read as a program (not an AIVM file, wrong format version)."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The `.aivm` file does not exist."""


class TamperedModelError(ModelFileError):
    """The bytes of a `.aivm` file do not hash to the id recorded in it, or are not canonical."""


class ModelIdMismatchError(ModelFileError):
    """A program's model id differs from the one the caller expected (say, the registered one)."""


class InputDTypeError(AivmError, TypeError):
    """Inference input has the wrong dtype: a float where an integer is required, say."""


class InputShapeError(AivmError, ValueError):
    """Inference input has the wrong shape for the program's input spec."""


class InputFileError(AivmError, ValueError):
    """An input file (``.npy`` or ``.json``) is missing or cannot be read as an integer array."""


class InputRangeError(AivmError, ValueError):
    """Inference input holds values outside the range of the program's input dtype."""


class UnknownModelError(AivmError, KeyError):
    """A zoo model name that the zoo does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ModelSourceError(AivmError, FileNotFoundError):
    """The files a zoo recipe converts (pretrained weights, tokenizer, text) are not installed."""


class WrongProgramError(AivmError, ValueError):
    """A program given to a text API (embed, generate) does not have the inputs and outputs it needs."""


class ResourceLimitError(AivmError, ValueError):
    """A request would need more memory or work than the node's budget allows: a refusal, not
    a wrong or missing answer. Smaller batches (or shorter inputs) may fit."""


class BatchJobError(AivmError, ValueError):
    """A batch job directory holds another job, or a chunk is missing after every process finished."""


class ProofError(AivmError):
    """Proof generation failed, or a program cannot be expressed exactly as a circuit."""


class UnsupportedForProofError(ProofError, ValueError):
    """The program uses an op, attribute or value range the circuit export cannot match bit for bit."""


class SrsError(ProofError, ValueError):
    """No usable structured reference string: give ``--srs PATH`` (a ceremony file) or ``--dev-srs``."""


class KeysNotFoundError(ProofError, FileNotFoundError):
    """No proving/verifying keys for this model id yet: run ``aivm prove setup`` first."""


class InvalidProofError(ProofError, ValueError):
    """A proof file does not verify: tampered, altered claim, or made for another model."""


class ToolchainError(ProofError, RuntimeError):
    """An external tool (Node.js, npm, solc-js) is missing or failed."""


class ChainError(AivmError):
    """Something on the chain side went wrong: a revert, a missing deployment, a dead node."""


class ChainConnectionError(ChainError, ConnectionError):
    """The JSON-RPC node does not answer; check --rpc-url and that the node is running."""


class TransactionRevertedError(ChainError):
    """A transaction or call reverted; the message names the contract error and its arguments."""

    def __init__(self, message: str, error_name: str | None = None, error_args: tuple = ()) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args


class NotDeployedError(ChainError, LookupError):
    """The AIVM contracts are not deployed on this chain (run `aivm chain deploy`)."""


class ResultTimeoutError(ChainError, TimeoutError):
    """A request did not finalize in the time allowed."""


class UntrustedVerifierError(ChainError, ValueError):
    """A model's registered verifier is not the one its program generates (or this machine has
    not generated it yet: run `aivm prove verifier FILE -o DIR` to generate and record it)."""


class RegistrationMismatchError(ChainError, ValueError):
    """What the registry records for a model (shape, row-hash header, size) differs from its program."""


class TransactionTimeoutError(ChainError, TimeoutError):
    """A sent transaction's receipt did not arrive in time: it may still be mined. Check its hash
    (in the message) before sending it again; a node re-reads the chain and does so itself."""


class StateFileError(AivmError, ValueError):
    """A node's state file belongs to another chain, market or node account; pass the right
    ``--state`` file (or none, for the default one named after all three)."""


class FetchError(AivmError, OSError):
    """A program or input could not be fetched from its URI (a transport error, a refused
    redirect, a file that is not a regular file, bytes that do not hash to the expected id)."""


class FetchTimeoutError(FetchError, TimeoutError):
    """A fetch took longer than the node's download time limit (``--download-timeout``)."""


class UriPolicyError(AivmError, PermissionError):
    """A request names a URI outside the node's policy: a scheme it does not fetch, or a local
    path outside its ``--input-dir``."""


__all__ += [
    "FetchError",
    "FetchTimeoutError",
    "StateFileError",
    "TransactionTimeoutError",
    "UriPolicyError",
]


class CommitmentError(AivmError, ValueError):
    """A dispute commitment (`aivm_jax.disputes`) cannot be built or read as asked: an empty
    tree, a leaf that is not 32 bytes, a step, slice or parameter that does not exist. The
    message names what exists."""


__all__ += ["CommitmentError"]

"""A chain connection and the account that signs: embedded (py-evm) or any JSON-RPC node."""

from __future__ import annotations

import time
from typing import Any

from aivm_jax._errors import (
    ChainConnectionError,
    ChainError,
    TransactionRevertedError,
    TransactionTimeoutError,
)
from aivm_jax.chain._artifacts import error_selectors

__all__ = [
    "Chain",
    "DEFAULT_RPC_URL",
    "RECEIPT_TIMEOUT",
    "chain_error",
    "decode_revert",
    "is_transport_error",
]

DEFAULT_RPC_URL = "http://127.0.0.1:8545"
RECEIPT_TIMEOUT = 120.0  # seconds a sent transaction may take to be mined before TransactionTimeoutError


def is_transport_error(error: BaseException) -> bool:
    """Whether ``error`` says the JSON-RPC node could not be reached or did not answer in time
    (refused or dropped connection, HTTP failure, read timeout, rate limit), rather than that
    the chain refused something. Such errors are transient: retry later."""
    import requests
    from web3 import exceptions as w3e

    transport = (
        ConnectionError,  # the built-in, so ChainConnectionError too
        TimeoutError,  # socket timeouts
        requests.exceptions.RequestException,
        w3e.ProviderConnectionError,
        w3e.RequestTimedOut,
        w3e.TooManyRequests,
        w3e.BadResponseFormat,  # a proxy's error page instead of JSON-RPC
    )
    return isinstance(error, transport) and not isinstance(error, TransactionTimeoutError)


def _is_revert(error: BaseException) -> bool:
    from web3 import exceptions as w3e

    if isinstance(error, w3e.ContractLogicError | w3e.ContractPanicError):
        return True
    if type(error).__name__ == "TransactionFailed":  # eth-tester's revert (py-evm), not imported here
        return True
    return "revert" in str(error).lower()


def chain_error(error: BaseException, what: str) -> ChainError:
    """The typed error for a failure of ``what`` (a call, a transaction), saying what happened.

    - a revert: `TransactionRevertedError`, naming the contract's custom error;
    - no receipt in time (web3's ``TimeExhausted``): `TransactionTimeoutError`;
    - the node unreachable or not answering: `ChainConnectionError`;
    - anything else the node refused (a nonce too low, no funds for gas): `ChainError`.
    """
    from web3 import exceptions as w3e

    if isinstance(error, ChainError):
        return error
    if isinstance(error, w3e.TimeExhausted):
        return TransactionTimeoutError(f"{what}: {error}; it may still be mined, check before resending")
    if is_transport_error(error):
        return ChainConnectionError(
            f"{what}: the JSON-RPC node did not answer ({type(error).__name__}: {error}); "
            "is it running and reachable? (a node daemon retries by itself)"
        )
    if _is_revert(error):
        return decode_revert(error)
    return ChainError(f"{what}: the node refused it ({type(error).__name__}: {error})")


def decode_revert(error: Exception) -> TransactionRevertedError:
    """Turn a web3 revert into a `TransactionRevertedError` naming the contract's custom error."""
    raw = _revert_data(error)
    found = error_selectors().get(raw[:4])
    if found is not None:
        from eth_abi import decode

        name, types = found
        try:
            args = tuple(decode(types, raw[4:]))
        except Exception:  # noqa: BLE001 - a malformed payload still names the error
            args = ()
        shown = ", ".join(a.hex() if isinstance(a, bytes) else str(a) for a in args)
        return TransactionRevertedError(f"reverted with {name}({shown})", name, args)
    return TransactionRevertedError(f"reverted: {error}")


def _revert_data(error: Exception) -> bytes:
    """The revert payload, wherever this web3 backend put it (hex ``data``, or eth-tester's bytes repr)."""
    data = getattr(error, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    for arg in getattr(error, "args", ()):
        if isinstance(arg, bytes):
            return arg
        if isinstance(arg, str) and "b'" in arg or isinstance(arg, str) and 'b"' in arg:
            import ast

            start = min(i for i in (arg.find("b'"), arg.find('b"')) if i >= 0)
            try:
                value = ast.literal_eval(arg[start:])
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, bytes):
                return value
    return b""


class Chain:
    """A `web3.Web3` plus the account that signs transactions.

    Use `Chain.embedded()` for an in-process chain (web3's eth-tester provider on
    py-evm, funded unlocked accounts) or `Chain.connect(url, key)` for a JSON-RPC
    node; ``key`` is a hex private key, or ``None`` to use the node's unlocked
    account ``account_index`` (Hardhat's dev accounts, say).
    """

    def __init__(self, w3, address: str, key: str | None = None) -> None:
        self.w3 = w3
        self.address = w3.to_checksum_address(address)
        self._key = key
        self.receipt_timeout = RECEIPT_TIMEOUT

    @classmethod
    def embedded(cls) -> Chain:
        from web3 import EthereumTesterProvider, Web3

        w3 = Web3(EthereumTesterProvider())
        return cls(w3, w3.eth.accounts[0])

    @classmethod
    def connect(cls, url: str = DEFAULT_RPC_URL, key: str | None = None, account_index: int = 0) -> Chain:
        from web3 import HTTPProvider, Web3

        w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}))
        try:
            _ = w3.eth.chain_id
        except Exception as error:  # noqa: BLE001 - any transport failure means the same to the user
            raise ChainConnectionError(
                f"no JSON-RPC node answers at {url} ({type(error).__name__}); is it running?"
            ) from None
        if key:
            from eth_account import Account

            return cls(w3, Account.from_key(key).address, key)
        accounts = w3.eth.accounts
        if len(accounts) <= account_index:
            raise ChainConnectionError(
                f"the node at {url} has no unlocked account {account_index}; pass --key"
            )
        return cls(w3, accounts[account_index])

    def as_account(self, address: str, key: str | None = None) -> Chain:
        """The same connection, signing as another account."""
        other = Chain(self.w3, address, key)
        other.receipt_timeout = self.receipt_timeout
        return other

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    def now(self) -> int:
        """The later of the wall clock and the latest block's timestamp (seconds)."""
        return max(int(time.time()), int(self.w3.eth.get_block("latest")["timestamp"]))

    def sync_clock(self) -> None:
        """Embedded chain only: move the pending block's timestamp up to the wall clock.

        eth-tester fixes a pending block's time when the previous block is mined, so
        without this a deadline would never pass on a chain that no one transacts on.
        A JSON-RPC node such as Hardhat stamps new blocks with the wall clock itself.
        """
        tester = getattr(self.w3.provider, "ethereum_tester", None)
        if tester is None:
            return
        pending = int(tester.get_block_by_number("pending")["timestamp"])
        now = int(time.time())
        if now > pending:
            tester.time_travel(now)

    def call(self, fn) -> Any:
        """``fn.call()`` from this account.

        Raises:
          TransactionRevertedError: the call reverted (the message names the contract error).
          ChainConnectionError: the JSON-RPC node did not answer.
          ChainError: the node refused the call for another reason.
        """
        try:
            self.sync_clock()
            return fn.call({"from": self.address})
        except Exception as error:  # noqa: BLE001 - sorted into typed errors by chain_error
            raise chain_error(error, f"call {_name(fn)}") from None

    def transact(self, fn, value: int = 0) -> Any:
        """Send ``fn`` as a transaction, wait for it, and return its receipt.

        The call is simulated first, so a revert raises `TransactionRevertedError`
        naming the contract error without spending gas.

        Raises:
          TransactionRevertedError: the simulation or the mined transaction reverted.
          TransactionTimeoutError: sent, but no receipt within `RECEIPT_TIMEOUT` seconds
            (it may still be mined; the message has its hash).
          ChainConnectionError: the JSON-RPC node did not answer.
          ChainError: the node refused the transaction for another reason (nonce, funds).
        """
        what = f"transaction {_name(fn)}"
        params = {"from": self.address, "value": value}
        try:
            self.sync_clock()
            if hasattr(fn, "call"):  # constructors cannot be simulated with eth_call in web3
                fn.call(params, block_identifier="pending")  # as the transaction will run: in the next block
            gas = fn.estimate_gas(params)
            params["gas"] = int(gas * 1.25) + 20_000
            if self._key is None:
                tx_hash = fn.transact(params)
            else:
                params["nonce"] = self.w3.eth.get_transaction_count(self.address, "pending")
                params["chainId"] = self.chain_id
                tx = fn.build_transaction(params)
                signed = self.w3.eth.account.sign_transaction(tx, self._key)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception as error:  # noqa: BLE001 - sorted into typed errors by chain_error
            raise chain_error(error, what) from None
        what = f"{what} {_hex(tx_hash)}"
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
        except Exception as error:  # noqa: BLE001
            raise chain_error(error, what) from None
        if receipt["status"] != 1:
            raise TransactionRevertedError(f"{what} reverted when mined")
        return receipt

    def deploy(self, abi, bytecode, *args, value: int = 0) -> str:
        contract = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        receipt = self.transact(contract.constructor(*args), value=value)
        return receipt["contractAddress"]

    def send_value(self, to: str, value: int) -> None:
        tx = {"from": self.address, "to": self.w3.to_checksum_address(to), "value": value}
        try:
            if self._key is None:
                tx_hash = self.w3.eth.send_transaction(tx)
            else:
                tx.update(
                    gas=21_000,
                    nonce=self.w3.eth.get_transaction_count(self.address, "pending"),
                    chainId=self.chain_id,
                    gasPrice=self.w3.eth.gas_price,
                )
                tx_hash = self.w3.eth.send_raw_transaction(
                    self.w3.eth.account.sign_transaction(tx, self._key).raw_transaction
                )
            self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout)
        except Exception as error:  # noqa: BLE001 - sorted into typed errors by chain_error
            raise chain_error(error, f"transfer of {value} wei to {to}") from None


def _name(fn) -> str:
    """A contract function's name for messages (``commit``, ``constructor``)."""
    return str(getattr(fn, "fn_name", None) or type(fn).__name__)


def _hex(tx_hash) -> str:
    raw = bytes(tx_hash) if not isinstance(tx_hash, str) else bytes.fromhex(tx_hash.removeprefix("0x"))
    return "0x" + raw.hex()

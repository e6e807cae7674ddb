// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title Forwarder: makes internal (contract-to-address) ETH transfers for tests.
contract Forwarder {
    /// Sends msg.value to `to` through an internal call.
    function forward(address payable to) external payable {
        _send(to, msg.value);
    }

    /// Several internal transfers in one transaction; sum(amounts) must equal msg.value.
    function forwardMany(address payable[] calldata to, uint256[] calldata amounts)
        external
        payable
    {
        require(to.length == amounts.length, "length mismatch");
        uint256 total;
        for (uint256 i = 0; i < to.length; i++) {
            total += amounts[i];
            _send(to[i], amounts[i]);
        }
        require(total == msg.value, "value mismatch");
    }

    /// Does the internal transfer, then reverts: the transfer never happened.
    function forwardThenRevert(address payable to) external payable {
        _send(to, msg.value);
        revert("forwarded then reverted");
    }

    receive() external payable {}

    function _send(address payable to, uint256 amount) internal {
        (bool ok, ) = to.call{value: amount}("");
        require(ok, "forward failed");
    }
}

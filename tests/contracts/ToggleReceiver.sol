// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title ToggleReceiver: a receiving wallet whose plain ETH transfers revert while closed.
contract ToggleReceiver {
    bool public open;

    constructor() {
        open = true;
    }

    function setOpen(bool open_) external {
        open = open_;
    }

    receive() external payable {
        require(open, "closed");
    }
}

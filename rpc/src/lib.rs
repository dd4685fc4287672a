//! `rpc`: the CVA wire protocol, the session server loop and a pipelined client.
//!
//! Renders the seed's "CVA OVERALL ARCHITECTURE USING LIBTASK" (rpc.c, server and
//! client sides). It sits on `taskio` and must never know what a cache, a vSSD or a
//! transaction is: it moves framed, checksummed messages and nothing else.
//!
//! Not built yet: the protocol, codec, server and client arrive with the `[rpc]` issue.
#![deny(unsafe_op_in_unsafe_fn)]

//! Lets `profiler` declare a build-dependency on this crate so cargo rebuilds the embedded eBPF
//! programs when it changes; the programs themselves are the `profiler` binary target.
#![no_std]

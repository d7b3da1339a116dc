//! Tests of the `purser` binary itself, run as a child process: crash
//! safety of the saga orchestrator under a real process kill.

mod crash;

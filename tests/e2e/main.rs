//! End-to-end tests: pullgate between real clients and real upstreams, all on loopback.
//! Every tool they need is required, never optional: a missing tool fails the test.

// The harness serves several issues' tests; not every helper is used by every build.
#[allow(dead_code)]
mod support;

mod cli;
mod client_auth;
mod clients;
mod errors;
mod faults;
mod pull;
mod upstream_auth;

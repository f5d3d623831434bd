//! End-to-end tests: pullgate between real clients and real upstreams, all on loopback.
//! Every tool they need is required, never optional: a missing tool fails the test.

mod support;

mod cache;
mod cli;
mod client_auth;
mod client_faults;
mod clients;
mod cluster;
mod config_files;
mod disk;
mod errors;
mod faults;
mod idle_connections;
mod image;
mod isolation;
mod load;
mod ops;
mod pull;
mod referrers;
mod s3;
mod signing_tools;
mod tag_rules;
mod token_realm;
mod trust;
mod upstream_auth;
mod upstream_faults;
mod upstream_limits;
mod upstream_redirects;
mod warm;

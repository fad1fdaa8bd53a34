//! Shared test harness: real processes (registry, skopeo, crane) and archive generators.
#![allow(dead_code)]

pub mod archives;
pub mod cli;
pub mod cluster;
pub mod faults;
pub mod http;
pub mod kube;
pub mod registry;

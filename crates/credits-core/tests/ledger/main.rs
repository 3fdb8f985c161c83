//! Ledger tests of the core: named rules of SPEC 3–5 and properties over random histories.

mod properties;
mod rules;

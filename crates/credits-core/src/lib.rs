//! placeholder
pub mod calendar;

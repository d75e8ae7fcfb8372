//! Placeholder until the datasets work lands.
